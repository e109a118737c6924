"""The "GPU Hub" admin service: allocations, usage, quotas, roster import, stop a server."""
