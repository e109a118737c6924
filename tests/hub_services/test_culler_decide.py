"""The culler's pure decision logic: signals in, keep / warn / cancel / cull out."""

from __future__ import annotations

import pytest

from hub_services.culler.decide import (
    CullWarning,
    GPUReading,
    GPUThresholds,
    KernelReading,
    Limits,
    Signals,
    decide,
    gpu_works,
    idle_timeout,
)

NOW = 1_000_000.0
IDLE = Limits(idle_seconds=600)
OLD = NOW - 3600  # long ago
BUSY = (KernelReading("busy", OLD),)
IDLE_KERNEL = (KernelReading("idle", OLD),)


def sig(**kw) -> Signals:
    base = {"started": OLD, "hub_activity": OLD, "kernels": IDLE_KERNEL}
    return Signals(**{**base, **kw})


CASES = [
    # (signals, limits, warning, warn_seconds) -> (action, reason)
    pytest.param(sig(), IDLE, None, 60, ("warn", "idle"), id="idle-everywhere-warns"),
    pytest.param(sig(), IDLE, None, 0, ("cull", "idle"), id="no-warning-window-culls-at-once"),
    pytest.param(sig(hub_activity=NOW - 10), IDLE, None, 60, ("keep", "hub-activity"), id="recent-hub-activity"),
    pytest.param(sig(server_activity=NOW - 10), IDLE, None, 60, ("keep", "server-activity"), id="server-activity"),
    pytest.param(sig(kernels=BUSY), IDLE, None, 60, ("keep", "kernel-busy"), id="busy-kernel-no-browser"),
    pytest.param(
        sig(kernels=(KernelReading("idle", NOW - 5),)), IDLE, None, 60, ("keep", "kernel-activity"), id="kernel-recent"
    ),
    pytest.param(sig(kernels=None), IDLE, None, 60, ("keep", "probe-failed"), id="server-unreachable-kept"),
    pytest.param(sig(keepalive=NOW - 30), IDLE, None, 60, ("keep", "keepalive"), id="keepalive"),
    pytest.param(
        sig(holds_gpu=True, gpu=GPUReading(utilization_percent=80)), IDLE, None, 60, ("keep", "gpu-busy"), id="gpu-util"
    ),
    pytest.param(
        sig(holds_gpu=True, gpu=GPUReading(memory_used_bytes=2 * 1024**3, utilization_percent=0)),
        IDLE, None, 60, ("keep", "gpu-busy"), id="gpu-memory",
    ),
    pytest.param(
        sig(holds_gpu=True, gpu=GPUReading(process_count=1, utilization_percent=None, mig=True)),
        IDLE, None, 60, ("keep", "gpu-busy"), id="mig-process-counts",
    ),
    pytest.param(
        sig(holds_gpu=True, gpu=GPUReading(process_count=1, utilization_percent=0)),
        IDLE, None, 60, ("warn", "idle"), id="process-without-work-on-whole-gpu",
    ),
    pytest.param(sig(holds_gpu=True, gpu_unknown=True), IDLE, None, 60, ("keep", "gpu-unknown"), id="agent-down"),
    pytest.param(sig(gpu_unknown=True), IDLE, None, 60, ("warn", "idle"), id="agent-down-cpu-server-unaffected"),
    pytest.param(sig(holds_gpu=True, gpu_active=NOW - 30), IDLE, None, 60, ("keep", "gpu-activity"), id="gpu-just-stopped"),
    pytest.param(sig(pending=True), IDLE, None, 60, ("keep", "pending"), id="pending"),
    pytest.param(sig(), Limits(idle_seconds=None), None, 60, ("keep", "within-limits"), id="no-idle-limit"),
    # max age and budget: hard limits, busy or not
    pytest.param(
        sig(kernels=BUSY, started=NOW - 7200), Limits(600, max_age_seconds=3600), None, 60, ("warn", "max-age"),
        id="max-age-even-when-busy",
    ),
    pytest.param(
        sig(kernels=BUSY, holds_gpu=True, gpu=GPUReading(utilization_percent=99)),
        Limits(600, gpu_seconds_left=0), None, 60, ("warn", "gpu-budget"), id="budget-even-when-gpu-busy",
    ),
    pytest.param(
        sig(hub_activity=NOW), Limits(600, gpu_seconds_left=0), None, 60, ("keep", "hub-activity"),
        id="budget-ignores-cpu-servers",
    ),
    pytest.param(
        sig(holds_gpu=True, gpu=GPUReading(utilization_percent=90)), Limits(600, gpu_seconds_left=100, gpu_servers_of_user=2),
        None, 60, ("warn", "gpu-budget"), id="budget-shared-by-two-gpu-servers",
    ),
    # an existing warning
    pytest.param(sig(), IDLE, CullWarning("idle", NOW - 61, NOW - 1), 60, ("cull", "idle"), id="warned-and-due"),
    pytest.param(sig(), IDLE, CullWarning("idle", NOW - 10, NOW + 50), 60, ("warn", "idle"), id="warned-not-yet-due"),
    pytest.param(
        sig(hub_activity=NOW - 5), IDLE, CullWarning("idle", NOW - 10, NOW + 50), 60, ("cancel", "activity"),
        id="activity-cancels-idle-warning",
    ),
    pytest.param(
        sig(keepalive=NOW - 5), IDLE, CullWarning("idle", NOW - 10, NOW + 50), 60, ("cancel", "activity"),
        id="keepalive-cancels-idle-warning",
    ),
    pytest.param(
        sig(kernels=BUSY), IDLE, CullWarning("idle", NOW - 10, NOW + 50), 60, ("cancel", "activity"),
        id="busy-kernel-cancels-idle-warning",
    ),
    pytest.param(
        sig(hub_activity=NOW - 5, started=NOW - 7200), Limits(600, max_age_seconds=3600),
        CullWarning("max-age", NOW - 61, NOW - 1), 60, ("cull", "max-age"), id="activity-does-not-lift-max-age",
    ),
    pytest.param(
        sig(hub_activity=NOW - 5), Limits(600, max_age_seconds=None), CullWarning("max-age", NOW - 61, NOW - 1), 60,
        ("cancel", "activity"), id="raised-quota-lifts-max-age-warning",
    ),
]


@pytest.mark.parametrize("signals, limits, warning, warn_seconds, expected", CASES)
def test_decide(signals, limits, warning, warn_seconds, expected):
    decision = decide(signals, limits, NOW, warn_seconds, warning)
    assert (decision.action, decision.reason) == expected


def test_warning_gives_the_full_window_even_when_the_limit_passed_long_ago():
    decision = decide(sig(), IDLE, NOW, 120)
    assert decision.action == "warn" and decision.cull_at == NOW + 120


def test_warning_comes_one_window_before_the_limit():
    assert decide(sig(hub_activity=NOW - 530), IDLE, NOW, 60).action == "keep"  # limit in 70 s
    decision = decide(sig(hub_activity=NOW - 550), IDLE, NOW, 60)  # limit in 50 s
    assert decision.action == "warn" and decision.cull_at == NOW + 60  # never less than the window
    decision = decide(sig(hub_activity=NOW - 550), IDLE, NOW, 30)
    assert decision.action == "keep"
    decision = decide(sig(hub_activity=NOW - 580), IDLE, NOW, 30)  # limit in 20 s, window 30 s
    assert decision.action == "warn" and decision.cull_at == NOW + 30
    old = CullWarning("idle", NOW - 40, NOW - 10)
    late = decide(sig(hub_activity=NOW - 620), IDLE, NOW, 30, old)
    assert late.action == "cull"


def test_not_culled_before_the_announced_time():
    warning = CullWarning("idle", NOW - 5, NOW + 55)
    assert decide(sig(), IDLE, NOW, 60, warning).action == "warn"
    assert decide(sig(), IDLE, NOW + 55, 60, warning).action == "cull"


@pytest.mark.parametrize(
    "reading, busy",
    [
        pytest.param(GPUReading(0, 0, 4), False, id="util-below"),
        pytest.param(GPUReading(0, 0, 5), True, id="util-at-threshold"),
        pytest.param(GPUReading(256 * 1024**2, 0, 0), False, id="memory-at-threshold"),
        pytest.param(GPUReading(256 * 1024**2 + 1, 0, 0), True, id="memory-above"),
        pytest.param(GPUReading(0, 2, None, True), True, id="mig-processes"),
        pytest.param(GPUReading(0, 0, None, True), False, id="mig-nothing"),
    ],
)
def test_gpu_works(reading, busy):
    assert gpu_works(reading, GPUThresholds(5, 256 * 1024**2)) is busy


@pytest.mark.parametrize(
    "profile, gpu, expected",
    [
        pytest.param("a100", True, 300.0, id="profile-set"),
        pytest.param("mig", True, 1200.0, id="gpu-default"),
        pytest.param("cpu", False, 3600.0, id="cpu-default"),
        pytest.param("never", False, None, id="zero-means-never"),
        pytest.param("", True, 1200.0, id="unknown-profile"),
    ],
)
def test_idle_timeout(profile, gpu, expected):
    assert idle_timeout(profile, gpu, {"a100": 300, "never": 0}, 1200, 3600) == expected


# ---- units wanted back: over share (idle first), a reservation's lent unit (taken back) -----

LONG_IDLE = Limits(idle_seconds=7200)  # the usual GPU idle timeout is far off
OVER = Limits(idle_seconds=7200, reclaim_idle_seconds=600)
TAKEN = Limits(idle_seconds=7200, reclaim_at=NOW)


@pytest.mark.parametrize(
    ("signals", "limits", "warning", "expected"),
    [
        # idle an hour: within the usual timeout, past the over-share one
        (sig(), LONG_IDLE, None, ("keep", "within-limits")),
        (sig(), OVER, None, ("warn", "over-share")),
        # busy: a guarantee never stops a busy server
        (sig(kernels=BUSY), OVER, None, ("keep", "kernel-busy")),
        # activity after the warning lifts it, as for an idle warning
        (sig(hub_activity=NOW - 5), OVER, CullWarning("over-share", NOW - 30, NOW + 270), ("cancel", "activity")),
        # its time came: stopped
        (sig(), OVER, CullWarning("over-share", NOW - 400, NOW - 100), ("cull", "over-share")),
        # a lent reserved unit taken back: warned even though busy, stopped after the warning
        (sig(kernels=BUSY), TAKEN, None, ("warn", "reclaim")),
        (sig(kernels=BUSY, hub_activity=NOW - 1), TAKEN, CullWarning("reclaim", NOW - 400, NOW - 100),
         ("cull", "reclaim")),
        # the line no longer wants it (the member got a unit): the warning is lifted
        (sig(kernels=BUSY), LONG_IDLE, CullWarning("reclaim", NOW - 30, NOW + 270), ("cancel", "activity")),
    ],
)
def test_units_wanted_back(signals, limits, warning, expected):
    got = decide(signals, limits, NOW, 300, warning)
    assert (got.action, got.reason) == expected, got


# ---- "budget running low": the budget's warning comes budget_lead_seconds ahead ----------------

BUDGET_20_MIN = Limits(idle_seconds=None, gpu_seconds_left=1200, budget_lead_seconds=1800)
TRAINING = sig(holds_gpu=True, kernels=BUSY)


@pytest.mark.parametrize(
    ("signals", "limits", "expected"),
    [
        # 20 min of GPU time left, told 30 min ahead: warned now (busy or not), stopped when it runs out
        (TRAINING, BUDGET_20_MIN, ("warn", "gpu-budget", NOW + 1200)),
        # an hour left: not yet
        (TRAINING, Limits(idle_seconds=None, gpu_seconds_left=3600, budget_lead_seconds=1800),
         ("keep", "kernel-busy", None)),
        # the lead is only the budget's: an idle deadline 20 min off is not warned yet
        (sig(hub_activity=NOW - 600), Limits(idle_seconds=1800, budget_lead_seconds=1800),
         ("keep", "hub-activity", None)),
        # no lead (0): the usual warning window
        (TRAINING, Limits(idle_seconds=None, gpu_seconds_left=1200), ("keep", "kernel-busy", None)),
    ],
)
def test_a_budget_running_low_is_told_ahead(signals, limits, expected):
    got = decide(signals, limits, NOW, 300)
    assert (got.action, got.reason, got.cull_at) == expected, got
