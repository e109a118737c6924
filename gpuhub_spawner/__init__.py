"""gpuhub: JupyterHub spawners that hand out GPUs, MIG instances and shared GPU slots.

The spawners are imported on first use, so the operator's ``gpuhub`` command (and
``python -m gpuhub_spawner.cli`` on a GPU node) works without JupyterHub installed.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["GPUDockerSpawner", "GPUSpawnerMixin", "GPUSwarmSpawner", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "GPUDockerSpawner":
        from gpuhub_spawner.hub.spawners import GPUDockerSpawner

        return GPUDockerSpawner
    if name == "GPUSwarmSpawner":
        from gpuhub_spawner.hub.swarmspawner import GPUSwarmSpawner

        return GPUSwarmSpawner
    if name == "GPUSpawnerMixin":
        from gpuhub_spawner.hub.mixin import GPUSpawnerMixin

        return GPUSpawnerMixin
    raise AttributeError(name)
