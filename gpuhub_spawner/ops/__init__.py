"""Operations on a hub's state: ``gpuhub backup``, ``gpuhub restore``, ``gpuhub upgrade``.

- :mod:`.manifest` (pure): what an archive must hold and how it is checked.
- :mod:`.databases`: consistent copies of the hub's and the ledger's databases (sqlite's backup
  API, ``pg_dump``), loading them back, counting rows.
- :mod:`.archive`: the tar.gz (mode 0600) and its safe, checksummed reading.
- :mod:`.local`: where a hub keeps its state (from gpuhub.yaml), backup and restore of it.
- :mod:`.upgrade`: a restore-tested backup, then JupyterHub's ``upgrade-db`` and gpuhub's migrations.
- :mod:`.stack`: the same against a deployed stack, inside the hub service's container.
- :mod:`.commands`: the argparse wiring used by :mod:`gpuhub_spawner.cli`.
"""
