"""The hub-side announcement callable never waits for the database (real sqlite, made slow).

The hub calls it on its event loop for every page; a database that does not answer must not
hold the call.  The database here is a real sqlite file whose queries wait on a gate the test
holds closed (an SQLAlchemy event on every engine), standing in for a slow PostgreSQL.
"""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from gpuhub_spawner.hub.announce import hub_announcement
from gpuhub_spawner.storage.notices import NoticeStore


@pytest.fixture
def gate():
    """A gate every SQL statement of this process waits on while ``gate.closed`` is set."""
    state = SimpleNamespace(closed=threading.Event(), opened=threading.Event())
    state.opened.set()

    def wait(*_args, **_kw):
        if state.closed.is_set():
            state.opened.wait(60)

    event.listen(Engine, "before_cursor_execute", wait)
    yield state
    state.opened.set()
    event.remove(Engine, "before_cursor_execute", wait)


def call_within(fn, seconds: float = 5.0):
    """``fn()`` in a thread; its result, or an assertion error if it is still running after ``seconds``."""
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the announcement waited for the database"
    return out["value"]


def test_a_slow_database_does_not_hold_the_page(tmp_path, gate):
    url = f"sqlite:///{tmp_path / 'usage.sqlite'}"
    store = NoticeStore(url)
    store.set_warning("ann", "", "idle", time.time(), time.time() + 600, "Your server will be stopped soon.")
    announcement = hub_announcement(url, fallback="site notice", ttl=0.2)
    ann, bob = SimpleNamespace(name="ann"), SimpleNamespace(name="bob")

    deadline = time.monotonic() + 10
    while "gpuhub-cull-warning" not in call_within(lambda: announcement(ann)):
        assert time.monotonic() < deadline, "the warning was never read"
        time.sleep(0.05)

    gate.opened.clear()
    gate.closed.set()  # from now on every query waits
    time.sleep(0.3)  # past the ttl: the next call wants fresh rows
    for _ in range(3):
        page = call_within(lambda: announcement(ann))
        assert "gpuhub-cull-warning" in page and page.endswith("site notice")  # the last known rows
        assert call_within(lambda: announcement(bob)) == "site notice"
        time.sleep(0.3)
    assert call_within(lambda: announcement(None)) == "site notice"

    # the database answers again: a cleared warning disappears from the page
    gate.closed.clear()
    gate.opened.set()
    store.clear_warning("ann", "")
    deadline = time.monotonic() + 10
    while "gpuhub-cull-warning" in call_within(lambda: announcement(ann)):
        assert time.monotonic() < deadline, "the cleared warning stayed"
        time.sleep(0.05)
    store.dispose()


def test_the_hub_config_imports_no_service_code():
    """The hub process runs hub-side code only: the announcement is ``gpuhub_spawner.hub.announce``,
    not a module of the culler (services are started as commands, never imported)."""
    config = Path(__file__).resolve().parents[2] / "jupyterhub_config.py"
    imported = set()
    for node in ast.walk(ast.parse(config.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "gpuhub_spawner.hub.announce" in imported
    assert not {name for name in imported if name.split(".")[0] == "hub_services"}
