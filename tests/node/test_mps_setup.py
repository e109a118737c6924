"""`gpuhub node setup --mps`: one MPS control daemon per shared GPU, created on the real engine.

Neither the NVIDIA runtime nor the MPS binaries exist here: the daemon container is created on
the real Docker engine with the default runtime (its command then fails, as it would without a
driver) and its spec is read back with ``docker inspect``; with the ``nvidia`` runtime named, the
engine's own refusal is turned into the fix.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import docker
import pytest

from gpuhub_spawner.cli import main
from gpuhub_spawner.core import mps
from gpuhub_spawner.core.cluster import shared_kind
from gpuhub_spawner.core.inventory import Inventory, units_from_gpus
from gpuhub_spawner.node import mps as node_mps

SHARED = "GPU-5a5a0000-0000-4000-8000-000000000001"
WHOLE = "GPU-6b6b0000-0000-4000-8000-000000000002"
MIG_GPU = "GPU-7c7c0000-0000-4000-8000-000000000003"
GPUS = [
    {"uuid": SHARED, "name": "A100 40GB", "memory_mb": 40960, "replicas": 4},
    {"uuid": WHOLE, "name": "A100 40GB", "memory_mb": 40960},
    {"uuid": MIG_GPU, "mig": [{"uuid": "MIG-7c7c0000-0000-4000-8000-000000000004", "profile": "3g.20gb"}]},
]


def _setup(tmp_path: Path, gpus: list, *extra: str) -> list[str]:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps(gpus))
    return ["node", "setup", "--static", str(path), "--daemon-json", str(tmp_path / "daemon.json"),
            "--runtime-config", str(tmp_path / "config.toml"), "--restart-command", "true", *extra]


def test_dry_run_shows_the_daemon_the_labels_and_the_bypass_warning_and_changes_nothing(tmp_path, capsys):
    assert main([*_setup(tmp_path, GPUS, "--mps", "--dry-run")]) == 0
    out = capsys.readouterr().out
    limits = mps.slot_limits(40960, 4)
    kind = shared_kind(SHARED)
    assert f"MPS daemon for {SHARED}: 4 clients of {limits.memory_mb} MiB and 25%" in out
    assert "docker run -d" in out and f"--name {mps.daemon_name(SHARED)}" in out and "--runtime nvidia" in out
    assert f"-e CUDA_VISIBLE_DEVICES={SHARED}" in out and "nvidia-cuda-mps-control -f" in out
    assert f'"org.gpuhub.shared.mps.{kind}={limits.label()}"' in out  # the engine label the hub reads
    assert f'"org.gpuhub.shared.memory.{kind}=40960"' in out
    assert f"MPS refused: {MIG_GPU}: MIG is enabled" in out
    assert "WARNING: the compute mode of these GPUs is left as it is" in out
    assert WHOLE not in out.split("MPS daemon")[-1]  # a whole GPU gets no daemon
    assert not (tmp_path / "daemon.json").exists()


def test_without_mps_a_shared_gpu_still_publishes_its_memory_but_no_daemon(tmp_path, capsys):
    assert main([*_setup(tmp_path, GPUS, "--dry-run")]) == 0
    out = capsys.readouterr().out
    assert f"org.gpuhub.shared.memory.{shared_kind(SHARED)}=40960" in out
    assert "org.gpuhub.shared.mps." not in out and "MPS" not in out


def test_compute_mode_changes_only_with_the_operators_flag(tmp_path, capsys):
    inventory = Inventory(tuple(units_from_gpus(GPUS)))
    assert not node_mps.plan(inventory, enable=True).compute_mode
    assert not node_mps.plan(inventory, enable=False, compute_mode=True).compute_mode
    assert node_mps.plan(inventory, enable=True, compute_mode=True).compute_mode
    assert main([*_setup(tmp_path, GPUS, "--mps", "--allow-compute-mode-change", "--dry-run")]) == 0
    out = capsys.readouterr().out
    assert "becomes EXCLUSIVE_PROCESS" in out and "WARNING" not in out

    calls = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    node_mps.set_exclusive([SHARED], run=lambda argv, **kw: calls.append(argv) or Done())
    assert calls == [["nvidia-smi", "-i", SHARED, "-c", "EXCLUSIVE_PROCESS"]]


@pytest.mark.parametrize(
    "gpus, says",
    [
        pytest.param([GPUS[1], GPUS[2]], "--mps needs time-sliced GPUs", id="no-shared-gpu"),
        pytest.param([{"uuid": SHARED, "replicas": 4}], "memory is unknown", id="no-memory"),
        pytest.param([{"uuid": SHARED, "memory_mb": 2048, "replicas": 8}], "under 256 MiB", id="too-small"),
    ],
)
def test_mps_that_cannot_work_is_refused_before_any_change(tmp_path, capsys, gpus, says):
    assert main(_setup(tmp_path, gpus, "--mps")) == 2
    err = capsys.readouterr().err
    assert says in err and "Nothing was changed" in err and "Traceback" not in err
    assert not (tmp_path / "daemon.json").exists()


# ---- the daemon container on the real engine ---------------------------------------------

@pytest.fixture
def fake_gpu(docker_client: docker.DockerClient):
    """A GPU uuid of this test alone; its daemon container and volumes are removed afterwards."""
    gpu = f"GPU-{uuid.uuid4()}"
    yield gpu
    node_mps.remove(docker_client, gpu)


@pytest.mark.docker
def test_the_daemon_container_as_the_engine_records_it(docker_client, fake_gpu):
    limits = mps.slot_limits(40960, 4)
    # the default runtime: this engine has no NVIDIA runtime (its absence is the next test)
    spec = mps.daemon_spec(fake_gpu, limits, "gpuhub/debian-base:bookworm", runtime="")
    assert node_mps.install(docker_client, spec) == "started"
    got = docker_client.api.inspect_container(spec.name)
    env = dict(e.split("=", 1) for e in got["Config"]["Env"])
    assert env["CUDA_VISIBLE_DEVICES"] == fake_gpu == env["NVIDIA_VISIBLE_DEVICES"]
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/nvidia-mps"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={limits.memory_mb}M"
    assert got["Config"]["Cmd"][:2] == ["sh", "-c"] and "set_default_active_thread_percentage 25" in got["Config"]["Cmd"][2]
    assert got["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert got["HostConfig"]["NetworkMode"] == "none" and got["Config"]["User"] == "0"
    assert got["Config"]["Labels"][mps.LABEL_MPS_LIMITS] == limits.label()
    mounts = {m["Destination"]: m["Name"] for m in got["Mounts"]}
    assert mounts == {"/tmp/nvidia-mps": mps.pipe_volume(fake_gpu), "/dev/shm": mps.shm_volume(fake_gpu),
                      "/var/log/nvidia-mps": mps.log_volume(fake_gpu)}
    shm = docker_client.api.inspect_volume(mps.shm_volume(fake_gpu))
    assert shm["Options"]["type"] == "tmpfs" and "size=2g" in shm["Options"]["o"] and "mode=1777" in shm["Options"]["o"]
    # what the hub reads: a daemon that runs for that GPU, with its limits
    assert mps.daemon_limits(got, fake_gpu, 4) == mps.SlotLimits(4 * limits.memory_mb, 4, limits.memory_mb, 25)
    # a second setup keeps it; new limits replace it
    assert node_mps.install(docker_client, spec) in ("kept", "replaced")  # replaced if it already exited
    smaller = mps.daemon_spec(fake_gpu, mps.slot_limits(40960, 8), "gpuhub/debian-base:bookworm", runtime="")
    # a client of the daemon (a container on its pipe volume): the daemon is not replaced under it
    client = docker_client.containers.run(
        "gpuhub/debian-base:bookworm", ["sleep", "300"], detach=True, name=f"{spec.name}-client",
        mounts=[docker.types.Mount(mps.PIPE_DIR, mps.pipe_volume(fake_gpu), type="volume", no_copy=True)])
    try:
        with pytest.raises(node_mps.MPSSetupError, match=r"1 server\(s\) use it .*Drain the node"):
            node_mps.install(docker_client, smaller)
        assert docker_client.api.inspect_container(spec.name)["Config"]["Labels"][mps.LABEL_MPS_LIMITS] == limits.label()
    finally:
        client.remove(force=True)
    assert node_mps.install(docker_client, smaller) == "replaced"
    assert docker_client.api.inspect_container(spec.name)["Config"]["Labels"][mps.LABEL_MPS_LIMITS] == \
        mps.slot_limits(40960, 8).label()


@pytest.mark.docker
def test_an_engine_without_the_nvidia_runtime_is_told_how_to_get_it(docker_client, fake_gpu):
    if "nvidia" in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("this engine has an NVIDIA runtime")
    spec = mps.daemon_spec(fake_gpu, mps.slot_limits(40960, 4), "gpuhub/debian-base:bookworm")
    with pytest.raises(node_mps.MPSSetupError, match="install the NVIDIA container toolkit"):
        node_mps.install(docker_client, spec)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(spec.name)
