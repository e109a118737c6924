"""``gpuhub node setup --mps``: one CUDA MPS control daemon per shared GPU of this node.

Each daemon is a container of the NVIDIA runtime (:func:`gpuhub_spawner.core.mps.daemon_spec`),
not a systemd unit: every gpuhub node already has Docker and the NVIDIA container toolkit, the
toolkit puts the driver's own MPS binaries into the container (so no driver version is baked
in), Docker restarts it with the engine (``unless-stopped``), the spec can be read back with
``docker inspect``, and the same code serves nodes without systemd.  The daemon's pipe and
``/dev/shm`` are per-GPU tmpfs volumes that the spawners mount into the GPU's clients.

Unlike NVIDIA's Kubernetes device plugin, whose daemon runs privileged with every GPU, each
daemon here sees only its own GPU and runs unprivileged (as root, which the control daemon needs
to start servers as its clients' uid); that this is enough is for the check on a lent GPU to
confirm (``tests/gpu``), as no driver exists where these tests run.

The GPU's compute mode is changed to *exclusive process* (so that a CUDA process cannot bypass
MPS and take the whole GPU) only with ``--allow-compute-mode-change``: it changes the GPU for
every program of the machine, so it is the operator's call.  Without it, setup says that a user
can bypass the limit.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gpuhub_spawner.core import mps
from gpuhub_spawner.core.cluster import shared_kind
from gpuhub_spawner.core.inventory import KIND_MIG, KIND_REPLICA, Inventory

DEFAULT_IMAGE = "gpuhub/debian-base:bookworm"


class MPSSetupError(Exception):
    """MPS cannot be set up as asked; the message says what to do."""


@dataclass
class SharedGPU:
    uuid: str
    slots: int
    memory_mb: int  # the GPU's (as its slots add up)


@dataclass
class Plan:
    """What setup does for MPS on this node: the daemons, the labels, what it refused."""

    daemons: list[mps.DaemonSpec] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    compute_mode: bool = False


def shared_gpus(inventory: Inventory) -> list[SharedGPU]:
    """The time-sliced GPUs of ``inventory`` (their memory as the sum of their slots')."""
    found: dict[str, SharedGPU] = {}
    for unit in inventory.units:
        if unit.kind == KIND_REPLICA and unit.gpu_uuid not in found:
            found[unit.gpu_uuid] = SharedGPU(unit.gpu_uuid, unit.slots, unit.memory_mb * unit.slots)
    return list(found.values())


def mig_gpus(inventory: Inventory) -> list[str]:
    return sorted({u.gpu_uuid for u in inventory.units if u.kind == KIND_MIG and u.gpu_uuid})


def plan(inventory: Inventory, enable: bool, image: str = DEFAULT_IMAGE, runtime: str = "nvidia",
         headroom_mb: int = mps.DEFAULT_HEADROOM_MB, compute_mode: bool = False) -> Plan:
    """The MPS plan for this node's units.

    Every shared GPU publishes its memory (the swarm hub's hints need it); with ``enable``,
    each gets a daemon and publishes its limits.  MIG GPUs are refused with the reason.
    """
    result = Plan(compute_mode=enable and compute_mode)
    gpus = shared_gpus(inventory)
    if enable:
        for uuid in mig_gpus(inventory):
            result.refused.append(
                f"{uuid}: MIG is enabled, and MPS is not used on MIG GPUs here (each MIG instance is "
                "already isolated); its instances are offered as they are"
            )
        if not gpus:
            raise MPSSetupError(
                "--mps needs time-sliced GPUs, and this node has none: pass --replicas N (N ≥ 2), or "
                "give GPUs 'replicas' in the --static file. Nothing was changed."
            )
    for gpu in gpus:
        limits = None
        if enable:
            try:
                limits = mps.slot_limits(gpu.memory_mb, gpu.slots, headroom_mb)
            except mps.MPSError as e:
                raise MPSSetupError(f"{gpu.uuid}: {e}. Nothing was changed.") from None
            result.daemons.append(mps.daemon_spec(gpu.uuid, limits, image, runtime=runtime))
        result.labels.update(mps.node_labels(shared_kind(gpu.uuid), gpu.memory_mb, limits))
    return result


def describe(spec: mps.DaemonSpec) -> str:
    """The daemon as a ``docker run`` line (what ``--dry-run`` prints)."""
    parts = ["docker run -d", f"--name {spec.name}", f"--runtime {spec.runtime}", "--user 0",
             f"--restart {spec.restart_policy['Name']}", "--network none"]
    parts += [f"--label {k}={v}" for k, v in sorted(spec.labels.items())]
    parts += [f"-e {k}={v}" for k, v in spec.environment.items()]
    parts += [f"-v {v.name}:{v.target}:nocopy" + (f" (tmpfs {v.options})" if v.tmpfs else "") for v in spec.volumes]
    parts += [spec.image, " ".join(shlex.quote(c) for c in spec.command)]
    return " \\\n    ".join(parts)


def show(p: Plan, out: Callable[[str], Any] = print) -> None:
    for line in p.refused:
        out(f"[setup] MPS refused: {line}")
    for spec in p.daemons:
        limits = spec.limits
        assert limits is not None
        out(f"[setup] MPS daemon for {spec.gpu_uuid}: {limits.slots} clients of "
            f"{limits.memory_mb} MiB and {limits.thread_percentage}% of the GPU's threads each")
        out(describe(spec))
    if p.daemons and not p.compute_mode:
        out("[setup] WARNING: the compute mode of these GPUs is left as it is. A user who points "
            "CUDA_MPS_PIPE_DIRECTORY elsewhere runs without MPS, with the whole GPU; pass "
            "--allow-compute-mode-change to set EXCLUSIVE_PROCESS, so that only MPS may open them.")
    elif p.daemons:
        out("[setup] the compute mode of these GPUs becomes EXCLUSIVE_PROCESS (nvidia-smi -c)")


def _spec_of(container: Any) -> dict[str, str]:
    return dict((container.attrs.get("Config") or {}).get("Labels") or {})


def install(client: Any, spec: mps.DaemonSpec) -> str:
    """Create and start the daemon's volumes and container; one of the same spec is kept.

    Returns what was done ("kept", "started", "replaced").  An engine without the runtime
    fails with the fix.
    """
    import docker

    for volume in spec.volumes:
        try:
            client.volumes.get(volume.name)
        except docker.errors.NotFound:
            client.volumes.create(volume.name, driver="local", driver_opts=volume.driver_opts(),
                                  labels={mps.LABEL_MPS_GPU: spec.gpu_uuid})
    done = "started"
    try:
        old = client.containers.get(spec.name)
    except docker.errors.NotFound:
        old = None
    if old is not None:
        if _spec_of(old) == {**_spec_of(old), **spec.labels} and old.status == "running":
            return "kept"
        _refuse_while_in_use(client, spec)
        old.remove(force=True)
        done = "replaced"
    try:
        container = client.containers.create(
            spec.image, spec.command, name=spec.name, environment=spec.environment, labels=spec.labels,
            runtime=spec.runtime or None, restart_policy=spec.restart_policy, network_mode="none",
            user="0",  # the control daemon starts each server as its clients' uid: it must be root
            # no copy of the image's own /dev/shm (root, 0755) over the volumes' 1777 mode
            mounts=[docker.types.Mount(v.target, v.name, type="volume", no_copy=True) for v in spec.volumes],
        )
    except docker.errors.APIError as e:
        text = str(e.explanation or e)
        if "runtime" in text:
            raise MPSSetupError(
                f"Docker has no '{spec.runtime}' runtime ({text}): install the NVIDIA container toolkit "
                "and run `nvidia-ctk runtime configure --runtime=docker`, then run setup again."
            ) from None
        raise MPSSetupError(f"creating the MPS daemon {spec.name} failed: {text}") from None
    container.start()
    return done


def _refuse_while_in_use(client: Any, spec: mps.DaemonSpec) -> None:
    """A daemon with clients is not replaced: their CUDA work would end with it."""
    pipe = mps.pipe_volume(spec.gpu_uuid)
    users = [c.name for c in client.containers.list(filters={"volume": pipe}) if c.name != spec.name]
    if users:
        raise MPSSetupError(
            f"the MPS daemon of {spec.gpu_uuid} would change, but {len(users)} server(s) use it "
            f"({', '.join(sorted(users)[:5])}): replacing it now would end their GPU work. Drain the node "
            "(gpuhub node drain), then run setup again. Nothing else was changed."
        )


def remove(client: Any, gpu_uuid: str) -> None:
    """Remove ``gpu_uuid``'s daemon and its volumes (those left by an earlier setup too)."""
    import docker

    try:
        client.containers.get(mps.daemon_name(gpu_uuid)).remove(force=True)
    except docker.errors.NotFound:
        pass
    for volume in client.volumes.list(filters={"label": f"{mps.LABEL_MPS_GPU}={gpu_uuid}"}):
        volume.remove(force=True)


def set_exclusive(uuids: Iterable[str], run: Callable[..., Any] = subprocess.run) -> None:
    """EXCLUSIVE_PROCESS compute mode for ``uuids`` (only called with the operator's flag)."""
    if not shutil.which("nvidia-smi") and run is subprocess.run:
        raise MPSSetupError("nvidia-smi is not installed: it sets the compute mode. Install the driver's utilities.")
    for uuid in uuids:
        done = run(["nvidia-smi", "-i", uuid, "-c", "EXCLUSIVE_PROCESS"], capture_output=True, text=True)
        if done.returncode != 0:
            raise MPSSetupError(f"setting the compute mode of {uuid} failed: {(done.stderr or done.stdout).strip()}")


def apply(p: Plan, client: Any, out: Callable[[str], Any] = print) -> None:
    if p.compute_mode:
        set_exclusive(spec.gpu_uuid for spec in p.daemons)
    for spec in p.daemons:
        out(f"[setup] MPS daemon {spec.name}: {install(client, spec)}")


def add_arguments(setup: argparse.ArgumentParser) -> None:
    setup.add_argument("--mps", action="store_true",
                       help="run a CUDA MPS daemon per time-sliced GPU: per-server memory and thread limits")
    setup.add_argument("--mps-image", default=DEFAULT_IMAGE, help="image of the MPS daemons (a shell is enough)")
    setup.add_argument("--mps-runtime", default="nvidia", help="the Docker runtime that exposes the GPU")
    setup.add_argument("--mps-headroom-mb", type=int, default=mps.DEFAULT_HEADROOM_MB,
                       help="GPU memory kept off the clients' shares (the MPS server's own)")
    setup.add_argument("--allow-compute-mode-change", action="store_true",
                       help="with --mps: set the GPUs' compute mode to EXCLUSIVE_PROCESS (changes them for every program)")


def plan_from_args(args: argparse.Namespace, inventory: Inventory) -> Plan:
    return plan(inventory, args.mps, args.mps_image, args.mps_runtime, args.mps_headroom_mb,
                args.allow_compute_mode_change)
