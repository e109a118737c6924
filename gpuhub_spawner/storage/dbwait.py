"""Wait for the hub's PostgreSQL server at start, instead of failing on it.

In the stack the hub and its database start together (``docker stack deploy`` orders nothing):
a hub that connects first gets "connection refused" or an unknown host name, JupyterHub exits
with "Failed to connect to db … try running jupyterhub upgrade-db" (the wrong advice), and swarm
restarts it until the database answers.  :func:`wait_for_database` runs from the hub's config
file before JupyterHub connects: it retries while the server cannot be reached yet, saying once
that it waits, and stops the hub with one line when the server refuses the connection itself (a
wrong password or database name: waiting would not help) or does not answer within the time.

A SQLite URL (the single-machine default) is not waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import create_engine, exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

#: seconds the hub waits at start for its database server to answer
DEFAULT_WAIT = 120.0

#: what PostgreSQL (libpq) says when the server answered and refused: waiting does not help
_REFUSED = ("authentication failed", "does not exist", "no pg_hba.conf entry", "password")


class DatabaseUnavailable(RuntimeError):
    """The database cannot be used; the message says which and why, without the password."""


def wait_for_database(url: str, timeout: float = DEFAULT_WAIT, say: Callable[[str], None] = print,
                      pause: float = 1.0) -> float:
    """Seconds waited until ``url`` (a PostgreSQL URL) accepts a connection; 0 for other kinds.
    Raises :class:`DatabaseUnavailable` when the server refuses, or after ``timeout`` seconds."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        return 0.0
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    t0 = time.monotonic()
    said = False
    try:
        while True:
            try:
                with engine.connect():
                    return time.monotonic() - t0
            except exc.OperationalError as e:
                reason = (str(e.orig or e).strip().splitlines() or [type(e).__name__])[0]
                if any(words in reason for words in _REFUSED):
                    raise DatabaseUnavailable(f"the database at {where} refused the hub: {reason}") from None
                waited = time.monotonic() - t0
                if waited >= timeout:
                    raise DatabaseUnavailable(
                        f"the database at {where} did not answer within {timeout:.0f} s: {reason}") from None
                if not said:
                    say(f"gpuhub: waiting for the database at {where} to answer ({reason})")
                    said = True
                time.sleep(pause)
    finally:
        engine.dispose()
