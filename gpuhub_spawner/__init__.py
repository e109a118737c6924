"""gpuhub: JupyterHub spawners that hand out GPUs, MIG instances and shared GPU slots."""

from .spawners import GPUDockerSpawner, GPUSpawnerMixin

__version__ = "0.1.0"
__all__ = ["GPUDockerSpawner", "GPUSpawnerMixin", "__version__"]
