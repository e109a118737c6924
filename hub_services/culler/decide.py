"""The culler's decisions from the signals of one server: keep, warn, cancel a warning, cull (pure).

Nothing here does I/O; :mod:`hub_services.culler.core` gathers the signals and acts.

A server is *idle* only when every signal agrees: no hub activity, no activity reported by
the server itself, no busy or recently active kernel, no keep-alive, and no GPU work on its
unit.  A signal that could not be read counts as *possibly active*: the culler never culls on
missing data.  (The culler asks servers from inside their containers, not through the proxy,
so its own questions are never hub activity.)

Three limits can end a server; the earliest wins:

``idle``        last activity + the profile's idle timeout
``max-age``     started + the quota's ``max_session_hours``
``gpu-budget``  now + the GPU-seconds left this period (GPU servers only), shared by the
                user's running GPU servers

Every cull is announced first: a warning with ``cull_at`` at least ``warn_seconds`` ahead (a
GPU-hour budget running out: ``budget_lead_seconds`` ahead, when longer).
Activity or a keep-alive after an *idle* warning cancels it; ``max-age`` and ``gpu-budget``
are hard limits that activity does not lift (raising the quota does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

# ---- vocabularies (also metric labels) --------------------------------------------------

ACTIONS = ("keep", "warn", "cancel", "cull", "error")
#: why a server is kept
KEEP_REASONS = (
    "pending",
    "hub-activity",
    "server-activity",
    "kernel-busy",
    "kernel-activity",
    "keepalive",
    "gpu-activity",
    "gpu-busy",
    "gpu-unknown",
    "probe-failed",
    "within-limits",
)
#: why a server is warned about or culled
CULL_REASONS = ("idle", "max-age", "gpu-budget", "over-share", "reclaim")
ERROR_REASONS = ("hub-api", "internal")
REASONS = KEEP_REASONS + CULL_REASONS + ("activity",) + ERROR_REASONS


@dataclass(frozen=True)
class KernelReading:
    """One kernel as the server's ``/api/kernels`` shows it (times in epoch seconds)."""

    execution_state: str
    last_activity: float | None = None
    connections: int = 0


@dataclass(frozen=True)
class GPUReading:
    """One server's GPU work as the node agent reports it (``None`` = not reported)."""

    memory_used_bytes: int = 0
    process_count: int = 0
    utilization_percent: int | None = None
    mig: bool = False


@dataclass(frozen=True)
class GPUThresholds:
    """What counts as GPU work."""

    utilization_percent: int = 5
    memory_bytes: int = 256 * 1024**2


@dataclass(frozen=True)
class Signals:
    """Everything known about one running server at ``now`` (epoch seconds).

    ``kernels`` is ``None`` when the server could not be asked; ``gpu`` is ``None`` when
    the server holds no GPU unit or no agent is configured, and ``gpu_unknown`` is true
    when it holds one but its agent could not be read; ``gpu_active`` is when the culler last
    saw its unit at work (so the idle clock starts when GPU work stops).
    """

    started: float
    hub_activity: float | None = None
    server_activity: float | None = None
    kernels: tuple[KernelReading, ...] | None = ()
    keepalive: float | None = None
    holds_gpu: bool = False
    gpu: GPUReading | None = None
    gpu_unknown: bool = False
    gpu_active: float | None = None
    pending: bool = False


@dataclass(frozen=True)
class Limits:
    """The limits of one server: idle timeout of its profile, quota age, GPU budget left."""

    idle_seconds: float | None
    max_age_seconds: float | None = None
    gpu_seconds_left: float | None = None
    gpu_servers_of_user: int = 1
    #: over its group's share while the line wants units back: this shorter idle timeout too
    reclaim_idle_seconds: float | None = None
    #: a lent reserved unit taken back: stopped (after the warning) from this time, busy or not
    reclaim_at: float | None = None
    #: the GPU-hour budget is announced this long before it runs out ("budget running low"),
    #: when longer than the usual warning
    budget_lead_seconds: float = 0.0


@dataclass(frozen=True)
class CullWarning:
    """A warning already given: when, why, and the cull time it announced."""

    reason: str
    warned_at: float
    cull_at: float


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    cull_at: float | None = None
    detail: str = ""
    last_active: float | None = None
    cancelled: str = ""
    notes: tuple[str, ...] = field(default=())


# ---- signals -> activity ----------------------------------------------------------------


def gpu_works(reading: GPUReading, thresholds: GPUThresholds) -> bool:
    """Is the unit doing work?  Utilization when NVML gives it; memory; processes where it does not."""
    if reading.utilization_percent is not None and reading.utilization_percent >= thresholds.utilization_percent:
        return True
    if reading.memory_used_bytes > thresholds.memory_bytes:
        return True
    return reading.utilization_percent is None and reading.process_count > 0


def _latest(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def activity(
    signals: Signals, now: float, gpu_thresholds: GPUThresholds
) -> tuple[str | None, float, str]:
    """(busy reason or None, last activity time, reason of the latest activity).

    A *busy reason* means the server is working right now (a busy kernel, GPU work, or a
    signal that could not be read); otherwise ``last_active`` is the latest sign of life.
    """
    if signals.kernels is None:
        busy: str | None = "probe-failed"
    elif any(k.execution_state == "busy" for k in signals.kernels):
        busy = "kernel-busy"
    elif signals.holds_gpu and signals.gpu_unknown:
        busy = "gpu-unknown"
    elif signals.holds_gpu and signals.gpu is not None and gpu_works(signals.gpu, gpu_thresholds):
        busy = "gpu-busy"
    else:
        busy = None
    sources = {
        "hub-activity": signals.hub_activity,
        "server-activity": signals.server_activity,
        "kernel-activity": _latest(k.last_activity for k in signals.kernels or ()),
        "keepalive": signals.keepalive,
        "gpu-activity": signals.gpu_active,
    }
    last_active, source = signals.started, "within-limits"
    for name, when in sources.items():
        if when is not None and when > last_active:
            last_active, source = min(when, now), name
    return busy, last_active, source


# ---- the decision -----------------------------------------------------------------------


#: warnings that activity (or a keep-alive) lifts; the others are limits
LIFTED_BY_ACTIVITY = frozenset({"idle", "over-share"})


def deadlines(signals: Signals, limits: Limits, busy: str | None, last_active: float, now: float) -> list[tuple[float, str]]:
    """(time, reason) of every limit that applies, earliest first."""
    found = []
    if busy is None and limits.idle_seconds is not None:
        found.append((last_active + limits.idle_seconds, "idle"))
    if busy is None and limits.reclaim_idle_seconds is not None:
        found.append((last_active + limits.reclaim_idle_seconds, "over-share"))
    if limits.reclaim_at is not None:
        found.append((limits.reclaim_at, "reclaim"))
    if limits.max_age_seconds is not None:
        found.append((signals.started + limits.max_age_seconds, "max-age"))
    if signals.holds_gpu and limits.gpu_seconds_left is not None:
        share = limits.gpu_seconds_left / max(1, limits.gpu_servers_of_user)
        found.append((now + share, "gpu-budget"))
    return sorted(found)


def decide(
    signals: Signals,
    limits: Limits,
    now: float,
    warn_seconds: float,
    warning: CullWarning | None = None,
    gpu_thresholds: GPUThresholds = GPUThresholds(),
) -> Decision:
    """What to do with one server now.

    - ``keep``: nothing to announce (``reason`` says why it lives: a busy signal, the source
      of its latest activity, or ``within-limits``).
    - ``warn``: announce (or keep announcing) a cull at ``cull_at``.
    - ``cancel``: an idle warning is lifted by activity or a keep-alive.
    - ``cull``: stop it now; it was warned and its time has come.

    With ``warn_seconds == 0`` a server past a limit is culled without a warning.
    """
    if signals.pending:
        return Decision("keep", "pending")
    busy, last_active, source = activity(signals, now, gpu_thresholds)
    cancelled = ""
    if warning is not None and warning.reason in LIFTED_BY_ACTIVITY and (busy or last_active > warning.warned_at):
        cancelled, warning = busy or source, None
    found = deadlines(signals, limits, busy, last_active, now)
    due = [(when, reason) for when, reason in found
           if when <= now + max(warn_seconds, limits.budget_lead_seconds if reason == "gpu-budget" else 0.0)]
    if not due:
        if cancelled or warning is not None:
            # activity, or a limit that was raised, lifted the warning
            return Decision("cancel", "activity", detail=cancelled or "limit raised", last_active=last_active)
        return Decision("keep", busy or source, last_active=last_active)
    when, reason = due[0]
    if warning is not None:
        cull_at = max(when, warning.warned_at + warn_seconds)
        if now >= cull_at:
            return Decision("cull", reason, cull_at, last_active=last_active, cancelled=cancelled)
        return Decision("warn", reason, cull_at, last_active=last_active)
    if warn_seconds <= 0 and when <= now:
        return Decision("cull", reason, now, last_active=last_active, cancelled=cancelled)
    return Decision("warn", reason, max(when, now + warn_seconds), last_active=last_active, cancelled=cancelled)


# ---- timeouts per profile ---------------------------------------------------------------


def idle_timeout(
    profile: str, holds_gpu: bool, per_profile: Mapping[str, float], gpu_default: float, cpu_default: float
) -> float | None:
    """The idle timeout of a server: its profile's, else the GPU or CPU default (0 = never)."""
    seconds = per_profile.get(profile) if profile else None
    if seconds is None:
        seconds = gpu_default if holds_gpu else cpu_default
    return None if seconds <= 0 else float(seconds)


def describe(reason: str, cull_at: float) -> str:
    """A short text for users: when and why (absolute time; pages add the time left)."""
    when = datetime.fromtimestamp(cull_at, timezone.utc).strftime("%H:%M:%S UTC")
    why = {
        "idle": "it has been idle (no browser, kernel or GPU activity)",
        "max-age": "it has reached the longest session your quota allows",
        "gpu-budget": "your GPU-hour budget for this period runs out then (a CPU-only server stays available)",
        "over-share": ("it has been idle while it holds a unit beyond your group's share and members of a group "
                       "with a guaranteed share or reservation wait for one"),
        "reclaim": ("the unit it holds was lent from a group's reservation, and a member of that group has "
                    "waited for it longer than the hub allows"),
    }[reason]
    return f"Your server will be stopped at {when} because {why}."
