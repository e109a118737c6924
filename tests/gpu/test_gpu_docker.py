"""PyTorch in gpuhub's user image sees exactly the unit it was given, as the spawner gives it
(``DeviceRequest(device_ids=[uuid], capabilities=[["gpu"]])``, i.e. ``docker run --gpus
device=<uuid>``).  Only where Docker, the NVIDIA container toolkit and the image are there:
images cannot be fetched onto a lent machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from gpucheck import docker_skip_reason

pytestmark = pytest.mark.gpu
IMAGE = os.environ.get("GPUHUB_PYTORCH_IMAGE", "gpuhub/pytorch:latest")
#: the image's PyTorch kernel interpreter (images/pytorch/Dockerfile)
PYTHON = "/opt/venvs/pytorch/bin/python"
PROBE = (
    "import json, torch\n"
    "n = torch.cuda.device_count()\n"
    "props = [torch.cuda.get_device_properties(i) for i in range(n)]\n"
    "print(json.dumps({'count': n, 'names': [p.name for p in props], 'uuids': [str(p.uuid) for p in props],\n"
    "                  'torch': torch.__version__}))\n"
)


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _preconditions() -> str | None:
    cli = shutil.which("docker")
    if not cli:
        return docker_skip_reason(None, "", False, IMAGE, False)
    info = _docker("info", "--format", "{{json .Runtimes}}")
    engine = "" if info.returncode == 0 else (info.stderr.strip() or "docker info failed")[-300:]
    toolkit = "nvidia" in info.stdout or bool(shutil.which("nvidia-ctk"))
    found = engine == "" and _docker("image", "inspect", IMAGE).returncode == 0
    return docker_skip_reason(cli, engine, toolkit, IMAGE, found)


def test_pytorch_in_the_user_image_sees_exactly_its_unit(machine, report):
    reason = _preconditions()
    if reason:
        pytest.skip(reason)
    units = [m.uuid for g in machine.smi_list for m in g.mig] or [g.uuid for g in machine.smi_list]
    if not units:
        pytest.skip("nvidia-smi lists no GPU to hand out")
    unit = units[-1]
    done = _docker(
        "run", "--rm", "--gpus", f"device={unit}", "--entrypoint", PYTHON, IMAGE, "-c", PROBE, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    report.add("user_image", image=IMAGE, unit=unit, units_on_machine=len(units), seen=seen)
    assert seen["count"] == 1, seen
    # torch prints the UUID without the GPU-/MIG- prefix
    assert seen["uuids"][0] in unit, (seen["uuids"], unit)
