"""Hub-managed services of gpuhub (culler, tutorial sync, exporter, admin): each its own process."""
