"""The ``org.gpuhub.*`` labels on server containers and services, and the one parser of them
(pure, standard library only: the node agent image carries this module without JupyterHub).

The spawners write them; the node agent, the culler, the hub exporter and a spawner adopting a
running server read them back with :meth:`ServerLabels.from_labels`, so what a label means is
said once here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

LABEL_PREFIX = "org.gpuhub."
LABEL_HUB = LABEL_PREFIX + "hub"
LABEL_USER = LABEL_PREFIX + "user"
LABEL_SERVER = LABEL_PREFIX + "server"
LABEL_UNIT = LABEL_PREFIX + "unit"
LABEL_POOL = LABEL_PREFIX + "pool"
LABEL_PROFILE = LABEL_PREFIX + "profile"
LABEL_NODE = LABEL_PREFIX + "node"  # swarm: the node a server's task runs on
LABEL_GROUP = LABEL_PREFIX + "share-group"  # the group whose guaranteed share its unit counts for


@dataclass(frozen=True)
class ServerLabels:
    """What a server container's (or swarm service's) labels say; '' for a label not set.

    ``unit`` is the GPU unit's id (``GPU-…``, ``MIG-…`` or ``GPU-…/slot-k``); ``pool`` is set
    for GPU servers only; ``server`` is '' for a user's default server.
    """

    hub: str = ""
    user: str = ""
    server: str = ""
    unit: str = ""
    pool: str = ""
    profile: str = ""
    node: str = ""
    group: str = ""

    @classmethod
    def from_labels(cls, labels: Mapping[str, str] | None) -> ServerLabels:
        """Parse a container's or service's labels (any mapping; ``None`` reads as no labels)."""
        labels = labels or {}
        return cls(
            hub=labels.get(LABEL_HUB) or "",
            user=labels.get(LABEL_USER) or "",
            server=labels.get(LABEL_SERVER) or "",
            unit=labels.get(LABEL_UNIT) or "",
            pool=labels.get(LABEL_POOL) or "",
            profile=labels.get(LABEL_PROFILE) or "",
            node=labels.get(LABEL_NODE) or "",
            group=labels.get(LABEL_GROUP) or "",
        )

    @property
    def is_server(self) -> bool:
        """A gpuhub notebook server (it names its user), not some other labelled object."""
        return bool(self.user)

    def of_hub(self, hub_id: str) -> bool:
        """Belongs to hub ``hub_id``; an empty ``hub_id`` means any hub."""
        return not hub_id or self.hub == hub_id

    @property
    def key(self) -> tuple[str, str]:
        """(user, server name): how the hub's REST API names the server."""
        return self.user, self.server
