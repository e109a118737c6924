"""GPU units, pools and the profiles users pick (pure: no I/O).

A *unit* is what one notebook server gets:

- a whole GPU (``GPU-<uuid>``),
- a MIG instance (``MIG-<uuid>``, with a profile such as ``1g.10gb``), or
- replica slot *k* of a GPU shared by time-slicing (N slots carry the same GPU UUID and
  no memory isolation).

Units are grouped into *pools* (every unit in a pool is interchangeable: ``gpu``,
``mig-1g.10gb``, ``shared``), and the *profiles* users pick map onto one pool each, or
onto none for CPU-only servers.

Static inventories come from configuration as a list of GPU descriptions::

    [
      {"uuid": "GPU-5e1c...", "name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559,
       "mig": [{"uuid": "MIG-9a0b...", "profile": "1g.10gb", "memory_mb": 9856}]},
      {"uuid": "GPU-77f0...", "replicas": 4},
    ]

NVML discovery (:mod:`gpuhub_spawner.node.nvml`) produces the same descriptions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuhub_spawner.core.mig_profiles import PROFILE_RE as _MIG_PROFILE
from gpuhub_spawner.core.mig_profiles import memory_isolated as _profile_memory_isolated

KIND_GPU = "gpu"
KIND_MIG = "mig"
KIND_REPLICA = "replica"

POOL_GPU = "gpu"
POOL_SHARED = "shared"

_GPU_UUID = re.compile(r"^GPU-[0-9A-Za-z-]+$")
#: ``MIG-<uuid>``, or ``MIG-GPU-<gpu uuid>/<gi>/<ci>`` as R450/R460 drivers print it.  Either is
#: passed on verbatim: the NVIDIA container CLI matches a MIG UUID against the one its driver
#: reports, so the form must be the one this driver prints.
_MIG_UUID = re.compile(r"^MIG-[0-9A-Za-z/-]+$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class InventoryError(ValueError):
    """A GPU inventory or profile list that cannot be used, with what to change."""

    def __init__(self, setting: str, problem: str, fix: str):
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"{setting}: {problem}. {fix}")


@dataclass(frozen=True)
class Unit:
    """One allocatable GPU unit.

    ``device_id`` is what Docker's DeviceRequest and ``NVIDIA_VISIBLE_DEVICES`` get: the GPU
    or MIG UUID.  ``id`` is unique per unit (replica slots append ``/slot-k``).
    """

    id: str
    kind: str
    pool: str
    device_id: str
    gpu_uuid: str
    node: str = ""
    memory_mb: int = 0
    mig_profile: str = ""
    slot: int = 0
    slots: int = 1
    gpu_name: str = ""

    @property
    def shared(self) -> bool:
        return self.kind == KIND_REPLICA

    @property
    def memory_isolated(self) -> bool:
        """False for replica slots and compute-instance MIG units (``1c.3g.40gb``), whose GPU
        memory other users' processes share."""
        if self.kind == KIND_MIG:
            return _profile_memory_isolated(self.mig_profile)
        return self.kind == KIND_GPU

    def describe(self) -> str:
        """Short human description, e.g. ``MIG 1g.10gb`` or ``shared GPU slot 2/4``."""
        if self.kind == KIND_MIG:
            return f"MIG {self.mig_profile}" + ("" if self.memory_isolated else " (GPU memory shared)")
        if self.kind == KIND_REPLICA:
            return f"shared GPU slot {self.slot + 1}/{self.slots}"
        return "whole GPU"


@dataclass(frozen=True)
class Profile:
    """A choice offered to users; ``pool`` is None for CPU-only."""

    slug: str
    display_name: str
    pool: str | None = None
    description: str = ""
    mem_limit: str | None = None
    cpu_limit: float | None = None
    default: bool = False

    @property
    def cpu_only(self) -> bool:
        return self.pool is None


@dataclass
class Inventory:
    """All units of one host (or of a swarm, with ``node`` set), indexed by pool."""

    units: tuple[Unit, ...] = ()
    by_id: dict[str, Unit] = field(default_factory=dict, repr=False)
    pools: dict[str, tuple[Unit, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        pools: dict[str, list[Unit]] = {}
        for unit in self.units:
            if unit.id in self.by_id:
                raise InventoryError(
                    "gpu_inventory",
                    f"unit {unit.id} is listed twice",
                    "List each GPU and MIG UUID once.",
                )
            self.by_id[unit.id] = unit
            pools.setdefault(unit.pool, []).append(unit)
        self.pools = {name: tuple(members) for name, members in pools.items()}

    def pool_names(self) -> list[str]:
        return sorted(self.pools)

    def pool_size(self, pool: str) -> int:
        return len(self.pools.get(pool, ()))


def pool_for_mig(profile: str) -> str:
    return f"mig-{profile}"


def pool_label(pool: str) -> str:
    """Human name of a pool: ``MIG 1g.10gb``, ``whole GPU``, ``shared GPU slot``."""
    if pool.startswith("mig-"):
        return "MIG " + pool[len("mig-") :]
    if pool == POOL_SHARED:
        return "shared GPU slot"
    if pool == POOL_GPU:
        return "whole GPU"
    return pool


def _need(gpu: Mapping[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in gpu:
        raise InventoryError(where, f"missing '{key}'", f"Give every entry a '{key}'.")
    value = gpu[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InventoryError(
            where,
            f"'{key}' must be a {kind.__name__}, not {value!r}",
            f"Write '{key}' as a {kind.__name__}.",
        )
    return value


def _int_field(entry: Mapping[str, Any], key: str, where: str, default: int, minimum: int) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InventoryError(
            where,
            f"'{key}' must be a whole number ≥ {minimum}, not {value!r}",
            f"Set '{key}' to a whole number ≥ {minimum} or leave it out.",
        )
    return value


def _uuid(entry: Mapping[str, Any], where: str, pattern: re.Pattern[str], kind: str, why: str) -> str:
    """The entry's ``uuid``, which must be a full ``GPU-…`` / ``MIG-…`` UUID."""
    uuid = _need(entry, "uuid", where, str)
    if not pattern.match(uuid):
        raise InventoryError(
            where,
            f"'{uuid}' is not a {kind} UUID",
            f"Use the full UUID that `nvidia-smi -L` prints, starting with '{kind}-'{why}.",
        )
    return uuid


def _mig_units(gpu_uuid: str, entries: Any, where: str, node: str, name: str) -> list[Unit]:
    if not isinstance(entries, list):
        raise InventoryError(where, "'mig' must be a list", "Give 'mig' as a list of instances.")
    units = []
    for j, mig in enumerate(entries):
        mwhere = f"{where}.mig[{j}]"
        if not isinstance(mig, Mapping):
            raise InventoryError(mwhere, "must be a mapping", "Give uuid and profile.")
        uuid = _uuid(mig, mwhere, _MIG_UUID, "MIG", "")
        profile = _need(mig, "profile", mwhere, str)
        if not _MIG_PROFILE.match(profile):
            raise InventoryError(
                mwhere,
                f"'{profile}' is not a MIG profile name",
                "Use the name nvidia-smi shows, such as '1g.10gb', '3g.40gb', '1g.10gb+me' or '1c.3g.40gb'.",
            )
        units.append(
            Unit(
                id=uuid,
                kind=KIND_MIG,
                pool=pool_for_mig(profile),
                device_id=uuid,
                gpu_uuid=gpu_uuid,
                node=node,
                memory_mb=_int_field(mig, "memory_mb", mwhere, 0, 0),
                mig_profile=profile,
                gpu_name=name,
            )
        )
    return units


def units_from_gpus(
    gpus: Sequence[Any],
    default_replicas: int = 1,
    node: str = "",
    setting: str = "gpu_inventory",
) -> list[Unit]:
    """Turn GPU descriptions (static config or NVML) into units.

    A GPU with MIG instances yields one unit per instance; otherwise ``replicas`` (per GPU,
    else ``default_replicas``) of 1 gives a whole-GPU unit and N > 1 gives N replica slots.
    """
    if not isinstance(gpus, (list, tuple)):
        raise InventoryError(
            setting, f"must be a list of GPUs, not {type(gpus).__name__}", "Give a JSON list."
        )
    units: list[Unit] = []
    for i, gpu in enumerate(gpus):
        units.extend(_gpu_units(gpu, f"{setting}[{i}]", default_replicas, node))
    return units


def _gpu_units(gpu: Any, where: str, default_replicas: int, node: str) -> list[Unit]:
    """The units of one GPU description: its MIG instances, one whole GPU, or its replica slots."""
    if not isinstance(gpu, Mapping):
        raise InventoryError(where, "must be a mapping", 'Write {"uuid": "GPU-..."}.')
    unknown = set(gpu) - {"uuid", "name", "memory_mb", "mig", "replicas", "node", "index"}
    if unknown:
        raise InventoryError(
            where,
            f"unknown key(s) {', '.join(sorted(unknown))}",
            "Allowed keys: uuid, name, memory_mb, mig, replicas, node.",
        )
    uuid = _uuid(gpu, where, _GPU_UUID, "GPU", " (indices are not accepted: they change between boots)")
    gnode = gpu.get("node", node)
    name = gpu.get("name", "")
    memory = _int_field(gpu, "memory_mb", where, 0, 0)
    mig = gpu.get("mig")
    if mig:
        if "replicas" in gpu and gpu["replicas"] != 1:
            raise InventoryError(
                where,
                "a MIG-enabled GPU cannot also be time-sliced",
                "Remove 'replicas' from this GPU or its 'mig' list.",
            )
        return _mig_units(uuid, mig, where, gnode, name)
    replicas = _int_field(gpu, "replicas", where, default_replicas, 1)
    if replicas == 1:
        return [Unit(uuid, KIND_GPU, POOL_GPU, uuid, uuid, gnode, memory, gpu_name=name)]
    return [
        Unit(
            id=f"{uuid}/slot-{k}",
            kind=KIND_REPLICA,
            pool=POOL_SHARED,
            device_id=uuid,
            gpu_uuid=uuid,
            node=gnode,
            memory_mb=memory // replicas if memory else 0,
            slot=k,
            slots=replicas,
            gpu_name=name,
        )
        for k in range(replicas)
    ]


def spread_order(units: Iterable[Unit]) -> list[Unit]:
    """Order units so that taking from the front spreads load across GPUs and nodes.

    Slot 0 / the first MIG instance of every GPU comes first, then slot 1, and so on: the
    k-th unit of a GPU is used only once every GPU in the pool has k units in use.
    """
    rank: dict[str, int] = {}
    keyed = []
    for unit in units:
        k = rank.get(unit.gpu_uuid, 0)
        rank[unit.gpu_uuid] = k + 1
        keyed.append((k, unit.node, unit.gpu_uuid, unit.id, unit))
    keyed.sort(key=lambda t: t[:4])
    return [t[-1] for t in keyed]


CPU_PROFILE = Profile(
    slug="cpu",
    display_name="CPU only",
    pool=None,
    description="No GPU. Always available.",
)


def default_profiles(inventory: Inventory) -> list[Profile]:
    """One profile per pool present, then CPU-only; the first GPU profile is the default."""
    profiles = []
    for pool in inventory.pool_names():
        units = inventory.pools[pool]
        memory = max((u.memory_mb for u in units), default=0)
        if pool == POOL_SHARED:
            desc = "A time-sliced share of a GPU. GPU memory is NOT isolated from other users."
        elif pool == POOL_GPU:
            desc = "A whole GPU to yourself."
        elif all(u.memory_isolated for u in units):
            desc = "An isolated MIG slice of a GPU."
        else:
            desc = (
                "A compute slice of a MIG instance: its own GPU cores, but GPU memory is NOT isolated "
                "from the other compute slices of the same instance."
            )
        if memory:
            desc += f" About {memory / 1024:.0f} GB of GPU memory."
        name = pool.lower().replace("gb-", "gb-no-") if pool.startswith("mig-") else pool.lower()  # -me, +me
        slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
        profiles.append(Profile(slug=slug, display_name=pool_label(pool), pool=pool, description=desc))
    if profiles:
        first = profiles[0]
        profiles[0] = Profile(**{**first.__dict__, "default": True})
        profiles.append(CPU_PROFILE)
    else:
        profiles.append(Profile(**{**CPU_PROFILE.__dict__, "default": True}))
    return profiles


def profiles_from_config(entries: Sequence[Any], inventory: Inventory, require_pools: bool = True) -> list[Profile]:
    """Validate ``gpu_profiles`` config into Profiles; an empty list means :func:`default_profiles`.

    ``require_pools=False`` (a swarm, whose pools come with its nodes) accepts a profile whose
    pool has no units yet.
    """
    if not entries:
        return default_profiles(inventory)
    profiles: list[Profile] = []
    seen: set[str] = set()
    allowed = {"slug", "display_name", "pool", "description", "mem_limit", "cpu_limit", "default"}
    for i, entry in enumerate(entries):
        where = f"gpu_profiles[{i}]"
        if not isinstance(entry, Mapping):
            raise InventoryError(where, "must be a mapping", 'Write {"slug": ..., "pool": ...}.')
        unknown = set(entry) - allowed
        if unknown:
            raise InventoryError(
                where, f"unknown key(s) {', '.join(sorted(unknown))}", f"Allowed: {', '.join(sorted(allowed))}."
            )
        slug = _need(entry, "slug", where, str)
        if not _SLUG.match(slug) or slug in seen:
            raise InventoryError(
                where,
                f"slug {slug!r} is invalid or repeated",
                "Use a unique lowercase slug of letters, digits, '.', '_' or '-'.",
            )
        seen.add(slug)
        pool = entry.get("pool")
        if pool is not None and require_pools and pool not in inventory.pools:
            have = ", ".join(inventory.pool_names()) or "none"
            raise InventoryError(
                where,
                f"pool {pool!r} has no GPU units on this hub (pools: {have})",
                "Point the profile at an existing pool, or set pool to null for CPU-only.",
            )
        cpu_limit = entry.get("cpu_limit")
        profiles.append(
            Profile(
                slug=slug,
                display_name=str(entry.get("display_name") or slug),
                pool=pool,
                description=str(entry.get("description", "")),
                mem_limit=entry.get("mem_limit"),
                cpu_limit=float(cpu_limit) if cpu_limit is not None else None,
                default=bool(entry.get("default", False)),
            )
        )
    if not any(p.default for p in profiles):
        profiles[0] = Profile(**{**profiles[0].__dict__, "default": True})
    return profiles
