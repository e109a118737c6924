"""gpuhub: run at every interpreter start (this folder is on PYTHONPATH in the image, so every
venv's Python finds it). Applies the hub's GPU memory share to PyTorch: gpuhub_gpulimits.py."""

try:
    import gpuhub_gpulimits

    gpuhub_gpulimits.install()
except Exception as _e:  # noqa: BLE001 - never stop Python from starting
    import sys

    print(f"gpuhub: the GPU memory hook did not load: {_e}", file=sys.stderr)
