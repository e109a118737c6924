"""gpuhub's database: one declarative base, engines and migrations (:mod:`.db`), the GPU usage
ledger and quota overrides (:mod:`.ledger`), notices, cull warnings and keep-alives (:mod:`.notices`)."""
