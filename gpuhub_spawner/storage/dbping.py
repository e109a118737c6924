"""Check a pooled database connection only when it may have gone stale.

JupyterHub checks every connection its session takes from the pool with a ``SELECT 1`` in a
transaction of its own (``jupyterhub.orm.register_ping_connection``, on the engine's
``engine_connect`` event, which fires at the start of every session transaction).  On PostgreSQL
that is three round trips (BEGIN, SELECT 1, COMMIT) before each of the hub's transactions, and the
hub's database calls are synchronous on its event loop: in a burst of 30 Starts on the stack, a
quarter of the loop's time went to these checks (py-spy of the workshop day's hub), so every
attendee's first answer waited behind them.

A connection goes stale when the server restarted or a network path dropped it while it sat in
the pool. :func:`ping_when_idle` checks it at checkout only when it was last used more than
:data:`IDLE_BEFORE_PING` seconds ago; a dead one raises :class:`sqlalchemy.exc.InvalidatePoolError`,
on which SQLAlchemy's pool throws it and every older pooled connection away and connects afresh
(its documented pessimistic disconnect handling). A connection used within that window is not checked: if the server went
away in those few seconds, the statement fails, SQLAlchemy sees a disconnect and invalidates the
whole pool, and the next request connects afresh — the same as any request in flight while the
database restarts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

#: seconds a pooled connection may sit unused and still be taken without a check
IDLE_BEFORE_PING = 5.0
_LAST_USED = "gpuhub_last_used"
#: JupyterHub's own ``register_ping_connection`` once :func:`use_for_jupyterhub` replaced it
#: (None before): loading the hub's config file replaces it for the whole process
jupyterhubs_check: Any = None


def ping_when_idle(engine: Engine, idle: float = IDLE_BEFORE_PING) -> None:
    """Check ``engine``'s pooled connections at checkout when they sat unused over ``idle`` s."""

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_LAST_USED] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_USED)
        if last is None or time.monotonic() - last <= idle:
            return  # just connected, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as e:
            if engine.dialect.is_disconnect(e, dbapi_connection, None):
                log.warning("A pooled database connection was stale (%s); connecting again", e)
                raise exc.InvalidatePoolError(str(e)) from e  # its pool-mates are as old: drop them too
            raise

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checkout)


def use_for_jupyterhub() -> bool:
    """Make JupyterHub check its connections with :func:`ping_when_idle` instead of before every
    transaction. Call it from the hub's config file: the hub reads its config before it makes its
    database engine. Returns False, leaving JupyterHub's own check, when this JupyterHub has no
    ``orm.register_ping_connection`` to replace."""
    from jupyterhub import orm

    if not callable(getattr(orm, "register_ping_connection", None)):
        log.warning("jupyterhub.orm.register_ping_connection is gone: JupyterHub keeps its own connection check")
        return False
    global jupyterhubs_check
    if orm.register_ping_connection is not ping_when_idle:  # a second config load keeps the first original
        jupyterhubs_check = orm.register_ping_connection
        orm.register_ping_connection = ping_when_idle
    return True
