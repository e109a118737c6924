"""gpuhub: JupyterHub spawners that hand out GPUs, MIG instances and shared GPU slots."""

from .mixin import GPUSpawnerMixin
from .spawners import GPUDockerSpawner

__version__ = "0.1.0"
__all__ = ["GPUDockerSpawner", "GPUSpawnerMixin", "__version__"]
