"""A GPU spawner built outside a hub: what it reads of its JupyterHub user and hub, nothing more.

For tests that call a spawner's methods directly (no hub database is involved).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

HUB = SimpleNamespace(
    api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/", public_host="", url="http://127.0.0.1:8081/hub/"
)


class FakeUser:
    """What a spawner reads of its JupyterHub user."""

    def __init__(self, name: str) -> None:
        self.name = self.escaped_name = name
        self.groups: list = []
        self.spawners: dict = {}
        self.url = f"/user/{name}/"
        self.id = 1
        #: every group of the fake hub (``db.query(orm.Group)``): the user's, unless a test sets others
        self.hub_groups: list | None = None
        self.db = self

    def query(self, model: Any) -> list:
        """The one database read a spawner makes through its user: the hub's groups."""
        assert model.__name__ == "Group", model
        return list(self.groups if self.hub_groups is None else self.hub_groups)


def offline_spawner(cls: type, user: str = "ann", **config: Any) -> Any:
    """``cls(user=..., hub=..., **config)`` with a fake user and hub."""
    return cls(user=FakeUser(user), hub=HUB, **config)
