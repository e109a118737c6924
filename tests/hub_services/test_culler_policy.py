"""The culler's quota for one user fails closed: a group property or override it cannot read
never lifts the limits of the default quota."""

from __future__ import annotations

import types

import pytest

from hub_services.culler import core


class _Hub:
    def __init__(self, props):
        self.props = props

    async def group_properties(self, name):
        return self.props[name]


def _state(overrides=None):
    return core.PassState(now=0.0, agents=None, containers=None, gpu_holders=set(), warnings={},
                          keepalives={}, overrides=overrides or {})


DEFAULTS = {"max_session_hours": 4, "gpu_hours_per_period": 10, "period": "week"}


@pytest.mark.parametrize(
    "props, overrides",
    [
        ({"course": {"max_session_hours": "forever"}}, {}),
        ({"course": {"gpu_hours_per_period": 1e12}}, {}),
        ({"course": {}}, {"ann": {"max_session_hours": -3}}),
    ],
    ids=["word-in-group", "beyond-bounds-in-group", "negative-override"],
)
async def test_unreadable_quota_keeps_the_default_limits(props, overrides, caplog):
    ctx = types.SimpleNamespace(hub=_Hub(props))
    settings = core.Settings(quota_defaults=DEFAULTS)
    policy = await core._policy(ctx, settings, _state(overrides), {"name": "ann", "groups": ["course"]})
    assert policy is not None
    assert policy.max_session_hours == 4 and policy.gpu_hours_per_period == 10
    assert "cannot be read" in caplog.text


async def test_readable_quota_is_used():
    ctx = types.SimpleNamespace(hub=_Hub({"course": {"max_session_hours": 8}}))
    settings = core.Settings(quota_defaults=DEFAULTS)
    policy = await core._policy(ctx, settings, _state(), {"name": "ann", "groups": ["course"]})
    assert policy.max_session_hours == 8
