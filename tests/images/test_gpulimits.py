"""The user image's interpreter-start hook that gives PyTorch its share of a shared GPU.

With the real PyTorch of the ``gpuhub/pytorch`` image (no GPU here): the hook does not import
torch, importing torch does not start CUDA, and the share is queued in torch's own lazy CUDA
start; only the device queries are stood in for when the queued call is run, since there is no
device.  The import-hook mechanics are also checked in this process with a stand-in package.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import docker
import pytest

REPO = Path(__file__).resolve().parents[2]
HOOK_DIR = REPO / "images" / "singleuser"
TORCH_IMAGE = "gpuhub/pytorch:latest"
TORCH_PYTHON = "/opt/venvs/pytorch/bin/python"

sys.path.insert(0, str(HOOK_DIR))
gpulimits = importlib.import_module("gpuhub_gpulimits")
sys.path.remove(str(HOOK_DIR))


@pytest.mark.parametrize(
    "value, expected",
    [("2048", 2048 * 1024**2), ("", None), ("0", None), ("-5", None), ("2G", None), (" 512 ", 512 * 1024**2)],
    ids=["set", "empty", "zero", "negative", "suffix", "spaces"],
)
def test_limit_is_read_from_the_hub_variable_only_when_sane(value, expected):
    assert gpulimits.limit_bytes({gpulimits.ENV: value}) == expected


def test_the_hook_waits_for_torch_and_queues_the_share(tmp_path, monkeypatch):
    """A stand-in ``torch`` package (its lazy-call queue only): the import hook's mechanics."""
    pkg = tmp_path / "torch"
    (pkg / "cuda").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import cuda\n")
    (pkg / "cuda" / "__init__.py").write_text("queued = []\ndef _lazy_call(fn):\n    queued.append(fn)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, name)
    assert not gpulimits.install({})  # no variable: nothing hooked
    before = len(sys.meta_path)
    assert gpulimits.install({gpulimits.ENV: "1024"})
    assert len(sys.meta_path) == before + 1 and "torch" not in sys.modules
    import torch  # noqa: F401 - the stand-in

    assert [fn.gpuhub_limit for fn in sys.modules["torch.cuda"].queued] == [1024**3]
    assert len(sys.meta_path) == before  # the hook removed itself


def _run_in_torch_image(client: docker.DockerClient, script: str, env: dict[str, str], mount: bool = True) -> dict:
    """``script`` by the PyTorch kernel's Python; ``mount``: with this checkout's hook files on
    PYTHONPATH, else the image's own files and PYTHONPATH, as built."""
    try:
        client.images.get(TORCH_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{TORCH_IMAGE} is not built here (images/build.sh pytorch)")
    files = ("gpuhub_gpulimits.py", "sitecustomize.py")
    volumes = {str(HOOK_DIR / f): {"bind": f"/opt/gpuhub/python/{f}", "mode": "ro"} for f in files} if mount else {}
    environment = {"PYTHONPATH": "/opt/gpuhub/python", **env} if mount else env
    out = client.containers.run(
        TORCH_IMAGE, [TORCH_PYTHON, "-c", script], entrypoint=[], remove=True, network_mode="none",
        user="1000", environment=environment, volumes=volumes, stderr=True,
    )
    return json.loads(out.decode().strip().splitlines()[-1])


PROBE = """
import json, sys
report = {"torch_at_start": "torch" in sys.modules, "hooked": type(sys.meta_path[0]).__name__}
import torch
report["cuda_started"] = torch.cuda.is_initialized()
queued = [c for c, _ in torch.cuda._queued_calls if hasattr(c, "gpuhub_limit")]
report["queued"] = [c.gpuhub_limit for c in queued]
if queued:
    # no GPU here: the device queries are stood in for; torch's own setter is what is called
    class Props:
        total_memory = 8 * 1024**3
    calls = []
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_properties = lambda device: Props
    torch.cuda.set_per_process_memory_fraction = lambda fraction, device: calls.append([fraction, device])
    queued[0]()
    report["calls"] = calls
print(json.dumps(report))
"""


@pytest.mark.docker
def test_real_pytorch_gets_the_share_at_cuda_start_without_cuda_starting_at_import(docker_client):
    report = _run_in_torch_image(docker_client, PROBE, {"GPUHUB_GPU_MEMORY_LIMIT_MB": "2048"})
    assert report["torch_at_start"] is False and report["hooked"] == "_AfterTorchImport"
    assert report["cuda_started"] is False
    assert report["queued"] == [2048 * 1024**2]
    assert report["calls"] == [[0.25, 0]]  # 2 GiB of an 8 GiB device


@pytest.mark.docker
def test_without_the_variable_pytorch_is_left_alone(docker_client):
    report = _run_in_torch_image(docker_client, PROBE, {})
    assert report["queued"] == [] and report["cuda_started"] is False and report["hooked"] != "_AfterTorchImport"


@pytest.mark.docker
def test_the_built_image_runs_the_hook_in_the_pytorch_kernel(docker_client):
    """As built (images/build.sh): the image's own PYTHONPATH and files, no mounts."""
    try:
        docker_client.containers.run(TORCH_IMAGE, ["test", "-f", "/opt/gpuhub/python/sitecustomize.py"],
                                     entrypoint=[], remove=True, network_mode="none")
    except docker.errors.ContainerError:
        pytest.skip(f"{TORCH_IMAGE} predates the hook: rebuild it (images/build.sh pytorch)")
    except docker.errors.ImageNotFound:
        pytest.skip(f"{TORCH_IMAGE} is not built here (images/build.sh pytorch)")
    report = _run_in_torch_image(docker_client, PROBE, {"GPUHUB_GPU_MEMORY_LIMIT_MB": "2048"}, mount=False)
    assert report["queued"] == [2048 * 1024**2] and report["cuda_started"] is False
