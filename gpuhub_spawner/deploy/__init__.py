"""The production stack: a pure renderer (:mod:`.stack`) and ``gpuhub deploy`` (:mod:`.deploycli`)."""
