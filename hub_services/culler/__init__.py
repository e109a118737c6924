"""GPU-aware idle culler: reclaim idle GPUs, keep computing servers, enforce session age and GPU budgets.

The decision logic is pure (:mod:`.decide`); :func:`.core.run_once` is one pass; the service
application is :class:`.app.CullerApp` (``python -m hub_services.culler``).
"""

from hub_services.culler.core import Context, Settings, run_once

__all__ = ["Context", "Settings", "run_once"]
