"""Limits for shared GPU slots: CUDA MPS where the operator turned it on, framework hints always
(pure: computes specs, touches nothing).

Time-slicing alone gives no memory isolation: one user can take the whole GPU's memory and the
others crash.  CUDA MPS (Multi-Process Service) can bound each client: a control daemon per GPU
starts an MPS server, every CUDA process of the GPU becomes a client of that server, and the
server enforces a *pinned device memory limit* and an *active thread percentage* per client.
This module turns a shared GPU (its memory, its slot count) into:

- :class:`SlotLimits`: each slot's memory (``(GPU memory - headroom) / slots``) and thread share
  (``100 // slots``: the shares add up to at most 100 %);
- :func:`daemon_spec`: the control daemon as a container of the NVIDIA runtime, run by
  ``gpuhub node setup --mps`` (:mod:`gpuhub_spawner.node.mps`);
- :func:`client_env` and :func:`client_mounts`: what a user's server on that GPU gets;
- :func:`hint_env`: the framework hints every shared slot gets, MPS or not (the fallback, and
  a second line under MPS): ``GPUHUB_GPU_MEMORY_LIMIT_MB`` (read by the user image's start hook,
  ``images/singleuser/gpuhub_gpulimits.py``, for PyTorch), JAX's
  ``XLA_PYTHON_CLIENT_MEM_FRACTION``, CuPy's ``CUPY_GPU_MEMORY_LIMIT``, TensorFlow's memory
  growth.  Hints are not limits: user code can ignore them.

What MPS really needs, and the choices made here:

- **Pipes**: the daemon, the server and the clients talk over named pipes and UNIX sockets in
  ``CUDA_MPS_PIPE_DIRECTORY``: a tmpfs volume per GPU, mounted in the daemon and in each client
  at :data:`PIPE_DIR`, which is also MPS's default (``/tmp/nvidia-mps``): a user who unsets the
  variable still reaches the daemon.
- **Shared memory**: server and clients exchange data through POSIX shared memory, so they must
  share ``/dev/shm``.  Not the host's IPC namespace: a size-capped tmpfs volume per GPU is the
  daemon's and each client's ``/dev/shm`` (as NVIDIA's Kubernetes device plugin does).  The
  price: the users of one GPU see each other's ``/dev/shm`` files (PyTorch data loaders put
  tensors there).  They already share one fault domain: a client that faults the GPU takes the
  MPS server, and every other client of that GPU, down with it.
- **One server per uid**: the daemon starts a server with the uid of the first client; a client
  of another uid waits until every client of the running server is gone.  gpuhub's user
  containers all run as uid :data:`CLIENT_UID` (1000); the daemon starts that uid's server at
  once, and the spawner runs an MPS client container as that uid whatever its image says, so a
  root image cannot stall the other users of its GPU.
- **Where the limit is set**: the client's environment is the user's to change, so the limits
  that hold are the daemon's defaults (``set_default_device_pinned_mem_limit``,
  ``set_default_active_thread_percentage``, sent through the control pipe before any client
  can connect, and in the daemon's environment too); the client gets the same values in its
  environment so that tools see them.
- **Bypass**: a CUDA process that does not find the daemon runs without MPS, with the whole GPU.
  Only the GPU's *exclusive-process* compute mode stops that (the MPS server is then the only
  process that may open the GPU); ``gpuhub node setup`` sets it only with
  ``--allow-compute-mode-change`` and says so otherwise.
- **Not on MIG**: gpuhub shares only whole GPUs (a MIG GPU cannot also be time-sliced); setup
  refuses MPS on a MIG-enabled GPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENFORCE_HINTS = "hints"
ENFORCE_MPS = "mps"
ENFORCE_CHOICES = (ENFORCE_HINTS, ENFORCE_MPS)

#: memory kept off the clients' shares: the MPS server's own context and the driver's reserve
DEFAULT_HEADROOM_MB = 1024
#: the uid of every gpuhub user container (the images' ``jovyan``)
CLIENT_UID = 1000
#: where clients and the daemon see the pipe directory (MPS's own default, on purpose)
PIPE_DIR = "/tmp/nvidia-mps"
LOG_DIR = "/var/log/nvidia-mps"
SHM_DIR = "/dev/shm"
#: size of each GPU's shared /dev/shm (clients' data loaders share it too)
DEFAULT_SHM_SIZE = "2g"
DAEMON_COMMAND = ("nvidia-cuda-mps-control", "-f")

#: engine labels a node publishes per shared kind (``org.gpuhub.shared.`` is rewritten by setup)
MEMORY_LABEL_PREFIX = "org.gpuhub.shared.memory."  # + kind: the GPU's memory in MiB
MPS_LABEL_PREFIX = "org.gpuhub.shared.mps."  # + kind: the daemon's limits, "memory_mb=…,threads=…"
#: labels of the daemon container itself
LABEL_MPS_GPU = "org.gpuhub.mps.gpu"
LABEL_MPS_LIMITS = "org.gpuhub.mps.limits"


class MPSError(ValueError):
    """MPS cannot be set up for this GPU: the message says why and what to do."""


@dataclass(frozen=True)
class SlotLimits:
    """What each client of one shared GPU may use."""

    gpu_memory_mb: int
    slots: int
    memory_mb: int
    thread_percentage: int

    @property
    def fraction(self) -> float:
        """The slot's memory as a fraction of the GPU's (for fraction-based framework hints)."""
        return self.memory_mb / self.gpu_memory_mb

    def label(self) -> str:
        return f"memory_mb={self.memory_mb},threads={self.thread_percentage}"


def thread_percentage(slots: int) -> int:
    """Each client's share of the GPU's threads: ``100 // slots`` (never past 100 % in all), ≥ 1."""
    return max(1, 100 // max(1, slots))


def slot_limits(gpu_memory_mb: int, slots: int, headroom_mb: int = DEFAULT_HEADROOM_MB) -> SlotLimits:
    """Per-client limits of a GPU of ``gpu_memory_mb`` MiB shared by ``slots`` servers."""
    if slots < 2:
        raise MPSError(f"a GPU with {slots} slot(s) is not shared: MPS limits are for time-sliced GPUs (replicas ≥ 2)")
    if gpu_memory_mb <= 0:
        raise MPSError("the GPU's memory is unknown: give memory_mb in the inventory (or discover GPUs with NVML)")
    usable = gpu_memory_mb - headroom_mb
    if usable < slots * 256:
        raise MPSError(
            f"{gpu_memory_mb} MiB less {headroom_mb} MiB of headroom leaves under 256 MiB for each of "
            f"{slots} slots: use fewer replicas, or less headroom"
        )
    return SlotLimits(gpu_memory_mb, slots, usable // slots, thread_percentage(slots))


def parse_limits_label(value: str, gpu_memory_mb: int = 0, slots: int = 0) -> SlotLimits | None:
    """A daemon's limits from its label (``memory_mb=…,threads=…``); None if unreadable."""
    match = re.fullmatch(r"memory_mb=(\d+),threads=(\d+)", (value or "").strip())
    if not match:
        return None
    memory, threads = int(match[1]), int(match[2])
    if memory <= 0 or not 1 <= threads <= 100:
        return None
    return SlotLimits(gpu_memory_mb or memory * max(1, slots), slots, memory, threads)


def daemon_limits(daemon: Mapping[str, Any] | None, gpu_uuid: str, slots: int) -> SlotLimits | None:
    """The limits of a daemon container (``docker inspect``) if it runs for ``gpu_uuid``."""
    if not daemon or not (daemon.get("State") or {}).get("Running"):
        return None
    labels = (daemon.get("Config") or {}).get("Labels") or {}
    if labels.get(LABEL_MPS_GPU) != gpu_uuid:
        return None
    return parse_limits_label(labels.get(LABEL_MPS_LIMITS, ""), 0, slots)


def short_id(gpu_uuid: str) -> str:
    """A name-safe id of the GPU for its daemon and volumes (``GPU-5e1c…`` -> ``5e1c0a2b9f11``)."""
    return re.sub(r"[^0-9a-z]", "", gpu_uuid.removeprefix("GPU-").lower())[:12]


def daemon_name(gpu_uuid: str) -> str:
    return f"gpuhub-mps-{short_id(gpu_uuid)}"


def pipe_volume(gpu_uuid: str) -> str:
    return f"gpuhub-mps-{short_id(gpu_uuid)}-pipe"


def shm_volume(gpu_uuid: str) -> str:
    return f"gpuhub-mps-{short_id(gpu_uuid)}-shm"


def log_volume(gpu_uuid: str) -> str:
    return f"gpuhub-mps-{short_id(gpu_uuid)}-log"


def memory_value(memory_mb: int) -> str:
    """MPS's spelling of a memory limit: ``20480M``."""
    return f"{memory_mb}M"


def control_commands(limits: SlotLimits, client_uid: int = CLIENT_UID) -> list[str]:
    """What the daemon is told through its control pipe, in order, before clients may connect.

    The defaults apply to servers started after them, so they come before ``start_server``.
    """
    return [
        f"set_default_device_pinned_mem_limit 0 {memory_value(limits.memory_mb)}",
        f"set_default_active_thread_percentage {limits.thread_percentage}",
        f"start_server -uid {client_uid}",
    ]


@dataclass(frozen=True)
class VolumeSpec:
    """A named local volume: tmpfs with ``options`` where ``tmpfs`` is set."""

    name: str
    target: str
    tmpfs: bool = True
    options: str = ""

    def driver_opts(self) -> dict[str, str]:
        return {"type": "tmpfs", "device": "tmpfs", "o": self.options} if self.tmpfs else {}


@dataclass(frozen=True)
class DaemonSpec:
    """One GPU's MPS control daemon, as a container of the NVIDIA runtime."""

    name: str
    gpu_uuid: str
    image: str
    command: list[str]
    environment: dict[str, str]
    volumes: list[VolumeSpec]
    labels: dict[str, str]
    runtime: str = "nvidia"
    limits: SlotLimits | None = None
    restart_policy: dict[str, Any] = field(default_factory=lambda: {"Name": "unless-stopped"})


def _start_script(limits: SlotLimits, client_uid: int) -> str:
    """The daemon's entry: the control daemon in the foreground, the defaults sent once its
    control pipe exists; the container ends (and is restarted) when the daemon ends."""
    sends = " && ".join(f"echo {c} | nvidia-cuda-mps-control" for c in control_commands(limits, client_uid))
    return (
        f"nvidia-cuda-mps-control -f & daemon=$!; "
        f"for _ in $(seq 100); do [ -p {PIPE_DIR}/control ] && break; sleep 0.1; done; "
        f"{sends} || {{ kill $daemon; exit 1; }}; "
        f"wait $daemon"
    )


def daemon_spec(gpu_uuid: str, limits: SlotLimits, image: str, *, runtime: str = "nvidia",
                client_uid: int = CLIENT_UID, shm_size: str = DEFAULT_SHM_SIZE) -> DaemonSpec:
    """The control daemon of ``gpu_uuid``: that GPU only, the defaults of ``limits``.

    The NVIDIA runtime puts the driver's ``nvidia-cuda-mps-control`` and ``-server`` into the
    container (the *compute* capability); the image only needs a shell.
    """
    env = {
        "NVIDIA_VISIBLE_DEVICES": gpu_uuid,
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "CUDA_VISIBLE_DEVICES": gpu_uuid,
        "CUDA_MPS_PIPE_DIRECTORY": PIPE_DIR,
        "CUDA_MPS_LOG_DIRECTORY": LOG_DIR,
        # the same defaults again, for a daemon that reads them from its environment
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(limits.thread_percentage),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory_value(limits.memory_mb)}",
    }
    volumes = [
        VolumeSpec(pipe_volume(gpu_uuid), PIPE_DIR, options="size=16m,mode=1777"),
        VolumeSpec(shm_volume(gpu_uuid), SHM_DIR, options=f"size={shm_size},mode=1777"),
        VolumeSpec(log_volume(gpu_uuid), LOG_DIR, tmpfs=False),
    ]
    labels = {LABEL_MPS_GPU: gpu_uuid, LABEL_MPS_LIMITS: limits.label()}
    return DaemonSpec(
        name=daemon_name(gpu_uuid), gpu_uuid=gpu_uuid, image=image,
        command=["sh", "-c", _start_script(limits, client_uid)],
        environment=env, volumes=volumes, labels=labels, runtime=runtime, limits=limits,
    )


def client_env(limits: SlotLimits) -> dict[str, str]:
    """An MPS client's environment: the daemon's pipe, and its limits (the daemon's hold)."""
    return {
        "CUDA_MPS_PIPE_DIRECTORY": PIPE_DIR,
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory_value(limits.memory_mb)}",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(limits.thread_percentage),
        "GPUHUB_GPU_LIMIT": ENFORCE_MPS,
    }


def client_mounts(gpu_uuid: str) -> list[dict[str, Any]]:
    """An MPS client's mounts (Docker ``Mount`` fields): its GPU's pipe directory and /dev/shm.

    The log directory is the daemon's alone: clients have no use for it.  ``NoCopy``: Docker
    would otherwise copy the image's own ``/dev/shm`` (root, 0755) over the volume's 1777 mode
    when it is first mounted, and uid 1000 could not create its shared memory there.
    """
    return [
        {"Target": PIPE_DIR, "Source": pipe_volume(gpu_uuid), "Type": "volume", "NoCopy": True},
        {"Target": SHM_DIR, "Source": shm_volume(gpu_uuid), "Type": "volume", "NoCopy": True},
    ]


def hint_env(slots: int, limits: SlotLimits | None) -> dict[str, str]:
    """The framework hints of a shared slot (``limits`` None: the GPU's memory is unknown)."""
    fraction = limits.fraction if limits is not None else 0.9 / max(1, slots)
    env = {
        "GPUHUB_GPU_SHARED": "1",
        "GPUHUB_GPU_LIMIT": ENFORCE_HINTS,
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:.3f}",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    }
    if limits is not None:
        env["GPUHUB_GPU_MEMORY_LIMIT_MB"] = str(limits.memory_mb)
        env["CUPY_GPU_MEMORY_LIMIT"] = str(limits.memory_mb * 1024 * 1024)
    return env


def shared_env(slots: int, limits: SlotLimits | None, mps: bool) -> dict[str, str]:
    """Everything a shared slot's server gets: the hints, and the MPS client's where ``mps``."""
    env = hint_env(slots, limits)
    if mps and limits is not None:
        env.update(client_env(limits))
    return env


def hint_limits(gpu_memory_mb: int, slots: int, headroom_mb: int = DEFAULT_HEADROOM_MB) -> SlotLimits | None:
    """The limits hints name, or None where the GPU's memory is unknown (or too small to split)."""
    try:
        return slot_limits(gpu_memory_mb, slots, headroom_mb)
    except MPSError:
        return None


def limit_note(enforce: str, limits: SlotLimits | None) -> str:
    """What the spawn form says of a shared slot's GPU limit."""
    size = f"{limits.memory_mb / 1024:.1f} GiB" if limits is not None else ""
    if enforce == ENFORCE_MPS:
        return (
            f"GPU memory limit enforced by MPS: about {size}, and {limits.thread_percentage}% of the GPU's compute"
            if limits is not None
            else "GPU memory limit enforced by MPS"
        )
    what = f"GPU memory limit of {size}" if size else "GPU memory limit"
    return f"{what} is a hint to PyTorch, TensorFlow, JAX and CuPy, not enforced"


def node_labels(kind: str, gpu_memory_mb: int, limits: SlotLimits | None) -> dict[str, str]:
    """The engine labels a swarm node publishes for one shared kind: the GPU's memory (for the
    hints) and, where its MPS daemon runs, the daemon's limits."""
    labels = {}
    if gpu_memory_mb:
        labels[MEMORY_LABEL_PREFIX + kind] = str(gpu_memory_mb)
    if limits is not None:
        labels[MPS_LABEL_PREFIX + kind] = limits.label()
    return labels


@dataclass(frozen=True)
class NodeShared:
    """What a node's labels say of one shared kind."""

    gpu_memory_mb: int
    mps: SlotLimits | None


def read_node_labels(labels: Mapping[str, str], kind: str, slots: int) -> NodeShared:
    """The memory and MPS limits a node publishes for ``kind`` (zeros/None where absent)."""
    raw = (labels or {}).get(MEMORY_LABEL_PREFIX + kind, "")
    memory = int(raw) if raw.isdigit() else 0
    mps = parse_limits_label((labels or {}).get(MPS_LABEL_PREFIX + kind, ""), memory, slots)
    return NodeShared(memory, mps)
