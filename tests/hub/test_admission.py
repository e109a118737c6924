"""The admission decision (pure): one reason and one wording per rule, wherever it is checked."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gpuhub_spawner.core.inventory import Profile
from gpuhub_spawner.core.quotas import QuotaPolicy
from gpuhub_spawner.hub import admission
from gpuhub_spawner.hub.admission import Choice, Facts, Refused
from gpuhub_spawner.hub.errors import REASONS

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)  # a Wednesday
GPU = Profile(slug="gpu", display_name="Whole GPU", pool="gpu", default=True)
CPU = Profile(slug="cpu", display_name="CPU only", pool=None)
PROFILES = [GPU, CPU]

UNITS_AT_MOST_ONE = (
    "You already hold 1 GPU unit, the most your quota allows. Stop another GPU server first, "
    "or start a CPU-only server."
)
IN_LINE = (
    "Your quota allows 1 GPU unit at once, and another of your servers is already holding or "
    "waiting in line for one. Stop or cancel that server first, or start a CPU-only server."
)


@pytest.mark.parametrize(
    "options, allowed, reason, message",
    [
        pytest.param(["gpu"], None, "bad-profile", 'The server options must be an object such as {"profile": "cpu"}.',
                     id="not-an-object"),
        pytest.param({"profile": 3}, None, "bad-profile", "'profile' must be a profile name, not int.", id="not-a-name"),
        pytest.param({"profile": "x"}, None, "bad-profile", "There is no profile called 'x'. Choose one of: cpu, gpu.",
                     id="unknown"),
        pytest.param({"profile": "gpu"}, {"cpu"}, "forbidden-profile",
                     "You may not use the profile 'gpu'. Choose another one.", id="forbidden"),
    ],
)
def test_choose_refuses(options, allowed, reason, message):
    with pytest.raises(Refused) as refused:
        admission.choose(PROFILES, options, allowed)
    assert (refused.value.reason, refused.value.message) == (reason, message)
    assert refused.value.reason in REASONS


@pytest.mark.parametrize(
    "profile, policy, facts, expected",
    [
        pytest.param(GPU, QuotaPolicy(), Facts(NOW), None, id="no-limits"),
        pytest.param(GPU, QuotaPolicy(max_gpu_units=1), Facts(NOW, units_held=1), UNITS_AT_MOST_ONE, id="units-held"),
        pytest.param(GPU, QuotaPolicy(max_gpu_units=1), Facts(NOW, units_waiting=1), IN_LINE, id="units-in-line"),
        pytest.param(GPU, QuotaPolicy(max_gpu_units=2), Facts(NOW, units_held=1), None, id="units-room"),
        pytest.param(GPU, QuotaPolicy(max_gpu_units=0), Facts(NOW),
                     "Your quota allows no GPU servers. Start a CPU-only server instead.", id="units-none"),
        pytest.param(CPU, QuotaPolicy(max_gpu_units=0, gpu_hours_per_period=0), Facts(NOW, units_held=3), None,
                     id="cpu-never-counts-gpu-rules"),
        pytest.param(GPU, QuotaPolicy(gpu_hours_per_period=1.0), Facts(NOW, gpu_seconds_used=3600),
                     "You have used your 1 GPU-hour for this week; it resets on Monday 2026-11-30 00:00 UTC. "
                     "A CPU-only server is still available.", id="budget-used"),
        pytest.param(CPU, QuotaPolicy(max_named_servers=1), Facts(NOW, server_name="b", named_servers=1),
                     "Your quota allows 1 named server(s) at once and you have 1. Stop one first.", id="named"),
        pytest.param(CPU, QuotaPolicy(max_named_servers=0), Facts(NOW, named_servers=3), None,
                     id="default-server-is-not-named"),
    ],
)
def test_decide(profile, policy, facts, expected):
    refused = admission.decide(Choice(profile, policy), facts)
    if expected is None:
        assert refused is None
    else:
        assert refused is not None and refused.message == expected
        assert refused.reason == "quota-exceeded"


def test_the_lock_recheck_has_the_same_words():
    """The allocator's OverLimit (under its lock) is worded by the same function as the check
    before the spawn, for the held and the in-line case."""
    before = admission.decide(Choice(GPU, QuotaPolicy(max_gpu_units=1)), Facts(NOW, units_waiting=1))
    assert before is not None and before.message == admission.units_message(1, 0, 1)
    assert admission.units_refusal(1, 1, 0).message == UNITS_AT_MOST_ONE
    assert admission.units_refusal(None, 5, 5) is None
