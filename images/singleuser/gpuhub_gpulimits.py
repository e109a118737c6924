"""PyTorch's share of a shared GPU, applied when the program first uses CUDA (gpuhub user images).

The hub gives a server on a shared GPU slot ``GPUHUB_GPU_MEMORY_LIMIT_MB`` (see
``gpuhub_spawner/core/mps.py``).  JAX, CuPy and TensorFlow read their own variables; PyTorch has
none, so this hook calls ``torch.cuda.set_per_process_memory_fraction`` for it.  It is a hint:
PyTorch's caching allocator then refuses to grow past the share (an ``OutOfMemoryError`` that
names the limit), but memory allocated outside that allocator is not counted, and user code can
raise the fraction again.  Where MPS runs, the MPS server enforces the limit; this stays as a
second, friendlier line.

``sitecustomize.py`` (on ``PYTHONPATH`` in the image, so every venv's interpreter runs it)
calls :func:`install`.  It must cost nothing to programs that do not use PyTorch and must not
start CUDA on its own:

- without the variable it does nothing at all;
- with it, it only adds an import hook: torch is not imported here;
- when the program imports torch, the fraction is queued with torch's own lazy CUDA
  initialisation (``torch.cuda._lazy_call``), so CUDA still starts only when the program first
  uses it (a fork before that still works), and the share is in place before the first
  allocation.
"""

from __future__ import annotations

import os
import sys

ENV = "GPUHUB_GPU_MEMORY_LIMIT_MB"


def limit_bytes(environ=os.environ) -> int | None:
    """The share in bytes, or None when the hub set none (or something unreadable)."""
    raw = environ.get(ENV, "").strip()
    if not raw.isdigit() or int(raw) <= 0:
        return None
    return int(raw) * 1024 * 1024


def _warn(message: str) -> None:
    print(f"gpuhub: {message}", file=sys.stderr)


def apply_to_torch(torch, limit: int) -> bool:
    """Queue the share with torch's lazy CUDA start; False (and a warning) where it cannot."""
    cuda = getattr(torch, "cuda", None)
    lazy = getattr(cuda, "_lazy_call", None)
    if lazy is None:
        _warn(f"this PyTorch has no lazy CUDA hook; {ENV} is not applied (call "
              "torch.cuda.set_per_process_memory_fraction yourself)")
        return False

    def set_fraction() -> None:
        # runs inside torch's CUDA initialisation: these calls do not start it again
        for device in range(cuda.device_count()):
            total = cuda.get_device_properties(device).total_memory
            cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)

    set_fraction.gpuhub_limit = limit  # how a test (or a curious user) finds it in the queue
    lazy(set_fraction)
    return True


class _AfterTorchImport:
    """A meta-path finder that lets the real finders find ``torch`` and wraps its loader, so
    that :func:`apply_to_torch` runs once torch's own ``__init__`` has run."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)  # once, and not for the lookups below
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, limit = spec.loader, self.limit
        original = loader.exec_module

        def exec_module(module) -> None:
            original(module)
            try:
                apply_to_torch(module, limit)
            except Exception as e:  # noqa: BLE001 - a hint must never break the user's import
                _warn(f"{ENV} could not be applied to PyTorch: {type(e).__name__}: {e}")

        loader.exec_module = exec_module
        return spec


def install(environ=os.environ) -> bool:
    """Hook torch's import where the hub set a share; True if hooked (or torch already had it)."""
    limit = limit_bytes(environ)
    if limit is None:
        return False
    if "torch" in sys.modules:  # imported before us (an embedding program): apply now
        return apply_to_torch(sys.modules["torch"], limit)
    sys.meta_path.insert(0, _AfterTorchImport(limit))
    return True
