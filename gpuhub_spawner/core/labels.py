"""The ``org.gpuhub.*`` labels on server containers and services (no imports: the node agent
image carries this module without JupyterHub).  :mod:`gpuhub_spawner.hub.mixin` writes them; the
node agent reads them back to map a GPU process to its user."""

from __future__ import annotations

LABEL_PREFIX = "org.gpuhub."
LABEL_HUB = LABEL_PREFIX + "hub"
LABEL_USER = LABEL_PREFIX + "user"
LABEL_SERVER = LABEL_PREFIX + "server"
LABEL_UNIT = LABEL_PREFIX + "unit"
LABEL_POOL = LABEL_PREFIX + "pool"
LABEL_PROFILE = LABEL_PREFIX + "profile"
LABEL_NODE = LABEL_PREFIX + "node"  # swarm: the node a server's task runs on
