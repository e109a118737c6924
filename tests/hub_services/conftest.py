"""Fixtures shared by the service tests that run one hub per module (a ``hub`` fixture there)."""

from __future__ import annotations

import pytest


@pytest.fixture
def users(hub, request):
    """Create users for one test; stop their servers afterwards (the hub's log on failure)."""
    made: list[str] = []

    def make(*names: str) -> list[str]:
        hub.create_users(list(names))
        made.extend(names)
        return list(names)

    yield make
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(f"\n---- hub log ----\n{hub.log_tail(150)}")
    for name in made:
        if hub.user(name).get("servers"):
            hub.stop_server(name)
