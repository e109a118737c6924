"""Shared GPU slots through a real JupyterHub and Docker engine: framework hints always, the MPS
client's environment and mounts where the GPU's MPS daemon runs, refusal where the hub says MPS
and none runs; CPU and whole-GPU servers get neither.

No MPS binary and no NVIDIA runtime exist here: the daemon is a stand-in container with the
real daemon's name, labels and volumes (from ``gpuhub node setup``'s own spec), running
``sleep`` instead of ``nvidia-cuda-mps-control``.
"""

from __future__ import annotations

import dataclasses
import html

import docker
import pytest
from harness import container_of, fake_gpus, render_form, server_env

from gpuhub_spawner.core import mps
from gpuhub_spawner.node import mps as node_mps

pytestmark = [pytest.mark.docker, pytest.mark.hub]

MEMORY = 40960
SLOT_MB = (MEMORY - mps.DEFAULT_HEADROOM_MB) // 2


def _inventory(tag: str) -> list[dict]:
    return [*fake_gpus(1, f"{tag}s", replicas=2, memory_mb=MEMORY), *fake_gpus(1, f"{tag}w", memory_mb=MEMORY)]


@pytest.fixture
def stand_in_daemon(docker_client: docker.DockerClient):
    """Start a stand-in MPS daemon for a GPU (removed with its volumes afterwards)."""
    made: list[str] = []

    def start(gpu: str, slots: int = 2) -> mps.SlotLimits:
        limits = mps.slot_limits(MEMORY, slots)
        spec = mps.daemon_spec(gpu, limits, "gpuhub/debian-base:bookworm", runtime="")
        made.append(gpu)
        node_mps.install(docker_client, dataclasses.replace(spec, command=["sleep", "infinity"]))
        return limits

    yield start
    for gpu in made:
        node_mps.remove(docker_client, gpu)


def _mounts(container) -> dict[str, str]:
    return {m["Destination"]: m.get("Name", m.get("Source", "")) for m in container.attrs["Mounts"]}


def _gpu_limit_line(form: str, slug: str) -> str:
    start = form.index(f'value="{slug}"')
    row = form[start : form.index("</div>", start)]
    return html.unescape(row.split('class="gpuhub-gpu-limit">')[1].split("<")[0]) if "gpuhub-gpu-limit" in row else ""


def test_hints_only_by_default_and_nothing_for_cpu_or_whole_gpus(docker_client, hub_factory):
    hub = hub_factory({"gpu_inventory": _inventory("h1")})
    hub.create_users(["sam", "wes", "cy", "vi"])
    for user, profile in (("sam", "shared"), ("wes", "gpu"), ("cy", "cpu")):
        assert hub.spawn(user, {"profile": profile}).status_code in (201, 202)
    for user in ("sam", "wes", "cy"):
        hub.wait_ready(user)

    shared = container_of(docker_client, hub, "sam")
    env = server_env(shared)
    assert env["GPUHUB_GPU_MEMORY_LIMIT_MB"] == str(SLOT_MB)
    assert env["CUPY_GPU_MEMORY_LIMIT"] == str(SLOT_MB * 1024**2)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == f"{SLOT_MB / MEMORY:.3f}"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and env["GPUHUB_GPU_LIMIT"] == "hints"
    assert not any(k.startswith("CUDA_MPS_") for k in env)
    assert mps.PIPE_DIR not in _mounts(shared) and "/dev/shm" not in _mounts(shared)
    for user in ("wes", "cy"):
        other = container_of(docker_client, hub, user)
        env = server_env(other)
        assert not any(k.startswith("CUDA_MPS_") or k in ("GPUHUB_GPU_MEMORY_LIMIT_MB", "CUPY_GPU_MEMORY_LIMIT")
                       for k in env), (user, env)
        assert mps.PIPE_DIR not in _mounts(other)

    form = render_form(hub, "vi")  # a user without a server sees the form
    assert _gpu_limit_line(form, "shared") == (
        f"GPU memory limit of {SLOT_MB / 1024:.1f} GiB is a hint to PyTorch, TensorFlow, JAX and CuPy, not enforced"
    )
    assert _gpu_limit_line(form, "gpu") == "" and _gpu_limit_line(form, "cpu") == ""


def test_mps_pool_refuses_without_a_daemon_and_wires_clients_to_a_running_one(docker_client, stand_in_daemon,
                                                                              hub_factory):
    # stand_in_daemon first: its volumes are removed after the hub's containers that mount them
    inventory = _inventory("m1")
    gpu = inventory[0]["uuid"]
    hub = hub_factory({"gpu_inventory": inventory, "gpu_shared_limit": "mps"})
    hub.create_users(["ann", "bo", "wes", "vi"])

    # no daemon for the GPU: refused with what to do, never started unlimited; the slot is freed
    outcome = hub.watch_spawn("ann", {"profile": "shared"}, timeout=120)
    assert outcome.failure is not None and "MPS service of the GPU you were given is not running" in outcome.failure
    assert not [c for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.user") == "ann"]

    limits = stand_in_daemon(gpu)
    for user in ("ann", "bo"):
        assert hub.spawn(user, {"profile": "shared"}).status_code in (201, 202)
    assert hub.spawn("wes", {"profile": "gpu"}).status_code in (201, 202)
    for user in ("ann", "bo", "wes"):
        hub.wait_ready(user)
    for user in ("ann", "bo"):
        container = container_of(docker_client, hub, user)
        env = server_env(container)
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == mps.PIPE_DIR
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={limits.memory_mb}M"
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50" and env["GPUHUB_GPU_LIMIT"] == "mps"
        assert env["GPUHUB_GPU_MEMORY_LIMIT_MB"] == str(limits.memory_mb)  # the hints stay, as a second line
        mounts = _mounts(container)
        assert mounts[mps.PIPE_DIR] == mps.pipe_volume(gpu) and mounts["/dev/shm"] == mps.shm_volume(gpu)
        assert container.attrs["Config"]["User"] == "1000"  # the uid of the GPU's one MPS server
    # the daemon and its clients really share the pipe directory and /dev/shm
    daemon = docker_client.containers.get(mps.daemon_name(gpu))
    daemon.exec_run(["sh", "-c", "echo from-daemon > /dev/shm/probe && mkfifo /tmp/nvidia-mps/control"])
    code, out = container_of(docker_client, hub, "ann").exec_run(
        ["sh", "-c", "cat /dev/shm/probe && test -p /tmp/nvidia-mps/control && echo fifo "
                     "&& echo from-client > /dev/shm/client && stat -c %a /dev/shm /tmp/nvidia-mps"], user="1000")
    assert code == 0 and out.decode().split() == ["from-daemon", "fifo", "1777", "1777"], out
    assert daemon.exec_run(["cat", "/dev/shm/client"]).output.decode().strip() == "from-client"
    whole = container_of(docker_client, hub, "wes")
    assert not any(k.startswith("CUDA_MPS_") for k in server_env(whole)) and mps.PIPE_DIR not in _mounts(whole)

    form = render_form(hub, "vi")
    assert _gpu_limit_line(form, "shared").startswith(
        f"GPU memory limit enforced by MPS: about {SLOT_MB / 1024:.1f} GiB, and 50% of the GPU's compute"
    )


def test_gpuhub_yaml_shared_limit_mps_refuses_a_slot_without_a_daemon(docker_client, hub_factory, tmp_path):
    """The documented path: ``inventory.shared_limit: mps`` in gpuhub.yaml (README), read by
    jupyterhub_config.py, refuses a shared slot whose GPU runs no MPS daemon, and frees it."""
    import yaml
    from harness import IMAGE

    path = tmp_path / "gpuhub.yaml"
    path.write_text(yaml.safe_dump({
        "images": {"default": IMAGE},
        "inventory": {"discovery": "static", "gpus": _inventory("y1"), "shared_limit": "mps"},
        "profiles": [
            {"slug": "shared", "display_name": "Shared GPU slot", "pool": "shared"},
            {"slug": "cpu", "display_name": "CPU only", "pool": None},
        ],
    }))
    hub = hub_factory(start=False)
    hub.start(env={"GPUHUB_CONFIG": str(path)})
    hub.create_users(["yoko"])
    outcome = hub.watch_spawn("yoko", {"profile": "shared"}, timeout=120)
    assert outcome.failure is not None and "MPS service of the GPU you were given is not running" in outcome.failure
    assert not [c for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.user") == "yoko"]
    # the form says the limit is MPS's
    assert "enforced by MPS" in _gpu_limit_line(render_form(hub, "yoko"), "shared")
