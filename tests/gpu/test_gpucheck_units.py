"""The parts of the GPU checks that need no GPU, run everywhere: reading ``nvidia-smi -L``, the
driver rule, the skip decisions, the report, the children's failure output, the script's plan,
and that the whole ``gpu`` directory skips cleanly (0 failures) where there is no GPU, CI too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gpucheck
import pytest
from gpucheck import Report, SmiGpu, SmiMig

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = HERE / "run-on-device.sh"

H100 = "GPU-5e1c0a2b-9f11-4c3d-8e7f-0123456789ab"
A100 = "GPU-77f0aaaa-bbbb-cccc-dddd-eeeeffff0000"
MIG1 = "MIG-9a0b1c2d-3e4f-5061-7283-94a5b6c7d8e9"
MIG2 = "MIG-1111aaaa-2222-3333-4444-555566667777"


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {H100})\n",
            [SmiGpu(0, "NVIDIA H100 80GB HBM3", H100)],
            id="one",
        ),
        pytest.param(
            f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {H100})\nGPU 1: NVIDIA A100-SXM4-40GB (UUID: {A100})\n",
            [SmiGpu(0, "NVIDIA H100 80GB HBM3", H100), SmiGpu(1, "NVIDIA A100-SXM4-40GB", A100)],
            id="two",
        ),
        pytest.param(
            f"GPU 0: NVIDIA A100-SXM4-40GB (UUID: {A100})\n"
            f"  MIG 1g.5gb      Device  0: (UUID: {MIG1})\n"
            f"  MIG 3g.20gb+me  Device  1: (UUID: {MIG2})\n"
            f"GPU 1: NVIDIA H100 80GB HBM3 (UUID: {H100})\n",
            [
                SmiGpu(
                    0,
                    "NVIDIA A100-SXM4-40GB",
                    A100,
                    (SmiMig("1g.5gb", 0, MIG1), SmiMig("3g.20gb+me", 1, MIG2)),
                ),
                SmiGpu(1, "NVIDIA H100 80GB HBM3", H100),
            ],
            id="mig",
        ),
        pytest.param(
            f"GPU 0: A100-SXM4-40GB (UUID: {A100})\n  MIG 1g.5gb Device 0: (UUID: MIG-{A100}/7/0)\n",
            [SmiGpu(0, "A100-SXM4-40GB", A100, (SmiMig("1g.5gb", 0, f"MIG-{A100}/7/0"),))],
            id="legacy-mig-uuid",
        ),
        pytest.param("No devices found.\n", [], id="none"),
        pytest.param(
            f"WARNING: infoROM is corrupted at gpu 0000:41:00.0\nGPU 0: NVIDIA L40S (UUID: {H100})\n\n",
            [SmiGpu(0, "NVIDIA L40S", H100)],
            id="warning-lines-ignored",
        ),
        pytest.param(f"  MIG 1g.5gb Device 0: (UUID: {MIG1})\n", [], id="mig-without-gpu-ignored"),
    ],
)
def test_parse_smi_list(text, expected):
    assert gpucheck.parse_smi_list(text) == expected


@pytest.mark.parametrize(
    "version, parsed, hides",
    [
        ("535.113.01", (535, 113, 1), True),
        ("535.104.05", (535, 104, 5), False),
        ("470.82.01", (470, 82, 1), False),
        ("545.23.06", (545, 23, 6), True),
        ("580.159.04", (580, 159, 4), True),
        ("", (), False),
        ("N/A", (), False),
    ],
)
def test_driver_rule(version, parsed, hides):
    assert gpucheck.parse_driver_version(version) == parsed
    assert gpucheck.hides_foreign_pids(parsed) is hides


@pytest.mark.parametrize(
    "control, mig, mode, expected",
    [
        ("/usr/bin/nvidia-cuda-mps-control", False, "Default", None),
        ("/usr/bin/nvidia-cuda-mps-control", False, "ExclusiveProcess", None),
        (None, False, "Default", "not installed"),
        ("/usr/bin/nvidia-cuda-mps-control", True, "Default", "MIG is on"),
        ("/usr/bin/nvidia-cuda-mps-control", False, "Prohibited", "Prohibited"),
    ],
)
def test_mps_skip_reason(control, mig, mode, expected):
    reason = gpucheck.mps_skip_reason(control, mig, mode)
    assert reason is None if expected is None else expected in reason


@pytest.mark.parametrize(
    "cli, engine, toolkit, found, expected",
    [
        ("/usr/bin/docker", "", True, True, None),
        (None, "", True, True, "no docker command"),
        (
            "/usr/bin/docker",
            "Cannot connect to the Docker daemon",
            True,
            True,
            "does not answer: Cannot connect",
        ),
        ("/usr/bin/docker", "", False, True, "container toolkit"),
        ("/usr/bin/docker", "", True, False, "gpuhub/pytorch:latest is not on this machine"),
    ],
)
def test_docker_skip_reason(cli, engine, toolkit, found, expected):
    reason = gpucheck.docker_skip_reason(cli, engine, toolkit, "gpuhub/pytorch:latest", found)
    assert reason is None if expected is None else expected in reason


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"GPUHUB_GPU_REPORT": "/r/x.json", "OUT": "/out"}, "/r/x.json"),
        ({"OUT": "/out"}, "/out/gpu-report.json"),
        ({}, "/tmp/made/gpu-report.json"),
        ({"OUT": ""}, "/tmp/made/gpu-report.json"),
    ],
)
def test_report_file(env, expected):
    assert gpucheck.report_file(env, lambda: "/tmp/made") == Path(expected)


@pytest.mark.parametrize(
    "env, gpu, expected",
    [
        ({}, False, False),
        ({}, True, True),
        ({"OUT": "/o"}, False, True),
        ({"GPUHUB_GPU_REPORT": "/r"}, False, True),
    ],
)
def test_wants_report(env, gpu, expected):
    assert gpucheck.wants_report(env, gpu) is expected


def test_report_document_and_file(tmp_path):
    report = Report(started=1000.0)
    report.add("machine", driver="580.159.04")
    report.add("machine", gpus=[{"name": "NVIDIA H100 80GB HBM3"}])
    report.outcome("tests/gpu/test_a.py::test_one", "passed", 1.23456)
    report.outcome("tests/gpu/test_a.py::test_two", "skipped", 0.0, "no driver")
    report.outcome("tests/gpu/test_a.py::test_three", "skipped", 0.0, "no docker")
    doc = report.document(now=1012.34)
    assert doc["summary"] == {"passed": 1, "skipped": 2}
    assert doc["figures"]["machine"] == {"driver": "580.159.04", "gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}
    assert doc["tests"][0] == {"test": "tests/gpu/test_a.py::test_one", "outcome": "passed", "seconds": 1.235}
    assert doc["tests"][1]["reason"] == "no driver" and doc["seconds"] == 12.3
    assert doc["started"] == "1970-01-01T00:16:40Z"
    path = tmp_path / "deeper" / "gpu-report.json"
    text = report.write(path)
    assert json.loads(path.read_text()) == json.loads(text)
    assert json.loads(text)["summary"] == {"passed": 1, "skipped": 2}


@pytest.mark.parametrize(
    "longrepr, expected",
    [
        (("f.py", 3, "Skipped: no driver"), "no driver"),
        (("f.py", 3, "why"), "why"),
        (None, ""),
        ("text", "text"),
    ],
)
def test_skip_reason_of(longrepr, expected):
    assert gpucheck.skip_reason_of(longrepr) == expected


# ---- the children, where they fail -------------------------------------------------------------------


def test_cuda_child_says_why_it_cannot_allocate_without_a_driver():
    if Path("/dev/nvidiactl").exists():
        pytest.skip("an NVIDIA driver is here: the gpu checks run the CUDA process for real")
    done = subprocess.run(
        [sys.executable, str(HERE / "cuda_child.py"), "--mib=1", "--backend=driver"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    doc = json.loads(done.stdout)
    assert done.returncode == 3 and doc["pid"] > 0 and "libcuda" in doc["error"], done


def _probe(tmp_path: Path, prefix: list[str]) -> dict:
    gpus = {
        "gpus": [
            {
                "uuid": H100,
                "name": "NVIDIA H100 80GB HBM3",
                "memory_mb": 81559,
                "processes": [{"pid": 4242, "used_bytes": 1 << 30}],
            }
        ]
    }
    (tmp_path / "gpus.json").write_text(json.dumps(gpus))
    env = {
        **os.environ,
        "GPUHUB_NVML_MODULE": "fakes.fake_nvml_file",
        "GPUHUB_FAKE_NVML_FILE": str(tmp_path / "gpus.json"),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "support")]),
    }
    done = subprocess.run(
        [*prefix, sys.executable, str(HERE / "ns_probe.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_probe_reports_pids_and_the_agent_pid_view(tmp_path):
    """The probe's plumbing against the FAKE NVML (the real one is the gpu checks' business)."""
    doc = _probe(tmp_path, [])
    assert doc["pids"] == [4242] and doc["used_bytes"] == {"4242": 1 << 30}
    unshare = shutil.which("unshare")
    if not unshare:
        pytest.skip("unshare is not installed")
    inside = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
    )
    if inside.returncode != 0:
        pytest.skip(f"no new PID namespace here: {inside.stderr.decode().strip()}")
    doc = _probe(tmp_path, [unshare, "--pid", "--fork", "--mount-proc"])
    assert doc["pid"] == 1 and doc["host_pid_view"] is False and doc["reason"]


# ---- the script ----------------------------------------------------------------------------------------


def _plan(tmp_path: Path, needs: str, wheels: Path) -> str:
    env = {
        **os.environ,
        "GPUHUB_GPU_PYTHON": sys.executable,
        "GPUHUB_GPU_NEEDS": needs,
        "GPUHUB_GPU_WHEELS": str(wheels),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_script_plans_how_python_is_set_up(tmp_path):
    empty, carried = tmp_path / "none", tmp_path / "whl"
    empty.mkdir()
    carried.mkdir()
    (carried / "traitlets-5.16.1-py3-none-any.whl").write_bytes(b"")
    assert _plan(tmp_path, "json pytest", empty) == "ready"
    assert _plan(tmp_path, "json no_such_module_gpuhub_check", empty) == "online"
    assert _plan(tmp_path, "json no_such_module_gpuhub_check", carried) == "wheels"
    assert _plan(tmp_path, "json", carried) == "wheels"  # carried wheels are the versions tested


def test_script_passes_shellcheck():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_script_skips_cleanly_without_a_gpu_in_ci_too(tmp_path):
    """The whole run, as on a lent machine, here: every check skips with its reason, 0 failures,
    exit 0, and the report in $OUT says so; CI=true changes nothing (CI has no GPU)."""
    if Path("/dev/nvidiactl").exists():
        pytest.skip("an NVIDIA driver is here: run the script itself")
    out, empty = tmp_path / "out", tmp_path / "no-wheels"
    out.mkdir()
    empty.mkdir()
    env = {
        **os.environ,
        "CI": "true",
        "OUT": str(out),
        "GPUHUB_GPU_PYTHON": sys.executable,
        "GPUHUB_GPU_WHEELS": str(empty),
    }
    env.pop("GPUHUB_GPU_REPORT", None)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu-report.json").read_text())
    assert report["summary"] == {"skipped": len(report["tests"])} and len(report["tests"]) >= 5, report[
        "summary"
    ]
    assert all("no NVIDIA driver" in t["reason"] for t in report["tests"]), report["tests"]
    assert "SKIPPED" in (out / "gpu-pytest.log").read_text()
