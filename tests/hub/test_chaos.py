"""Chaos with 10 spawns in flight: the Docker engine is restarted; the hub is SIGKILLed.

A real JupyterHub with its proxy and the real Docker engine; only the GPUs are FAKE (4 made-up
units, so 4 spawns get one at once and the others wait in line).  Afterwards:

- every spawn ended ready or with a clear message: no raw Docker text, no traceback, no host or id;
- once the hub has settled, the engine's ``org.gpuhub.unit`` labels, the hub's spawner state, the
  options form's free count (the allocator's view) and the usage ledger's open rows agree: no unit
  held twice, none held without a running container, the rows of servers that are gone closed;
- new spawns still work and every unit can be handed out again.

The engine restart stops every container on this machine (no live-restore), the swarm rig's
nodes too: it runs only as root next to a local dockerd, never while a rig is up, and holds
``/tmp/gpuhub-engine-restart.lock`` meanwhile (see tests/support/engine.py).  Run the figures with ``-s``.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import time

import engine
import pytest
import requests
from harness import HubProcess, SpawnOutcome, fake_gpus, render_form
from needs import IN_CI, unavailable
from swarm_rig import RIG_LABEL

from gpuhub_spawner.storage.ledger import UsageLedger

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.chaos]

N_GPUS = 4
USERS = [f"c{i}" for i in range(10)]
FRESH = [f"n{i}" for i in range(N_GPUS)]  # new users after the chaos
OBSERVER = "watcher"  # never spawns: reads the options form
GPU = {"profile": "gpu"}
QUEUE_WAIT = 30  # long enough to wait in line through the chaos (an engine restart takes a few seconds);
# the spawns still in line at the end time out of it: the test waits this long for them
SETTLE_TIMEOUT = 300  # a queue wait, a start and the hub's http_timeout (120 s), with room

#: what must not reach a user: engine or library text, tracebacks, addresses, object ids
RAW = re.compile(
    r"traceback|docker|apierror|errno|urllib3|connectionpool|exception|conflict|"
    r"\bhttps?://|\b(?:\d{1,3}\.){3}\d{1,3}\b|\b[0-9a-f]{12,}\b|status=",
    re.IGNORECASE,
)


# ---- what the hub, the engine and the ledger say ----------------------------------------


def _containers(hub: HubProcess, docker_client) -> list[tuple[str, str, dict]]:
    """(name, state, labels) of the hub's containers, in one list call (they come and go meanwhile)."""
    found = docker_client.api.containers(all=True, filters={"label": f"org.gpuhub.hub={hub.hub_id}"})
    return [(c["Names"][0].lstrip("/"), c["State"], c.get("Labels") or {}) for c in found]


def _view(hub: HubProcess, docker_client) -> dict:
    """One reading of everything that says who holds which unit."""
    running, leftovers = {}, {}
    for name, state, labels in _containers(hub, docker_client):
        if state == "running":
            running[name] = (labels.get("org.gpuhub.user"), labels.get("org.gpuhub.unit"))
        else:
            leftovers[name] = state
    servers = {}
    for user in hub.api("GET", "/users", params={"limit": 200}).json():
        server = user["servers"].get("")
        if server:
            state = server.get("state") or {}
            servers[user["name"]] = {
                "ready": bool(server.get("ready")),
                "pending": server.get("pending"),
                "unit": state.get("gpu_unit", ""),
                "container": state.get("object_name", ""),
            }
    ledger = UsageLedger(f"sqlite:///{hub.data_dir / 'gpuhub-usage.sqlite'}")
    try:
        open_rows = [(row.holder, row.user, row.unit_id) for row in ledger.open_intervals()]
    finally:
        ledger.dispose()
    return {"running": running, "leftovers": leftovers, "servers": servers, "ledger": open_rows}


HOLDING_NOT_RUNNING = ("created", "restarting", "paused")  # the allocator counts these as holding


def unsettled(view: dict) -> list[str]:
    """What in ``view`` is not settled yet: empty once the hub, the engine and the ledger agree."""
    servers, running = view["servers"], view["running"]
    ready = {u for u, s in servers.items() if s["ready"]}
    held = {name for name, (_, unit) in running.items() if unit}
    open_rows = {holder for holder, _, _ in view["ledger"]}
    found = {
        "spawns still pending": sorted(u for u, s in servers.items() if s["pending"]),
        "servers listed but not up": sorted(u for u, s in servers.items() if not s["ready"] and not s["pending"]),
        "ready at the hub without a running container": sorted(ready - {u for u, _ in running.values()}),
        "running containers the hub does not list as ready": sorted({u for u, _ in running.values()} - ready),
        "containers holding a unit without running": sorted(
            f"{name} ({state})" for name, state in view["leftovers"].items() if state in HOLDING_NOT_RUNNING
        ),
        "ledger rows open for servers that are gone": sorted(open_rows - held),
        "running GPU servers without an open ledger row": sorted(held - open_rows),
    }
    return [f"{what}: {items}" for what, items in found.items() if items]


def wait_settled(hub: HubProcess, docker_client, since: float, timeout: float) -> tuple[dict, float, list[str]]:
    """The first settled view (or the last one), the seconds from ``since``, what is unsettled."""
    view = _view(hub, docker_client)
    while unsettled(view) and time.monotonic() < since + timeout:
        time.sleep(1)
        view = _view(hub, docker_client)
    return view, time.monotonic() - since, unsettled(view)


def _free_in_form(hub: HubProcess) -> int:
    """Free whole GPUs as the options form shows them: the allocator's own count."""
    found = re.findall(rf"(\d+) of {N_GPUS} free", render_form(hub, OBSERVER))
    assert len(found) == 1, found
    return int(found[0])


def reachable_problems(hub: HubProcess, view: dict) -> list[str]:
    """Every server the hub lists as ready answers its user through the proxy."""
    problems = []
    for user in sorted(u for u, s in view["servers"].items() if s["ready"]):
        r = requests.get(f"{hub.url}/user/{user}/api/status", timeout=30,
                         headers={"Authorization": f"token {hub.new_token(user)}"})
        if r.status_code != 200:
            problems.append(f"{user}'s ready server answers {r.status_code} through the proxy")
    return problems


def unit_problems(hub: HubProcess, view: dict) -> list[str]:
    """No unit held twice or without a running container; engine, hub state, form and ledger agree."""
    problems = []
    units = [unit for _, unit in view["running"].values() if unit]
    if len(units) != len(set(units)):
        problems.append(f"a unit is held by two running servers: {view['running']}")
    for name, (user, unit) in view["running"].items():
        state = view["servers"].get(user, {})
        if (state.get("container"), state.get("unit")) != (name, unit):
            problems.append(f"{user}: the hub's state says {state}, the engine runs {name} with {unit}")
    if sorted(unit for _, _, unit in view["ledger"]) != sorted(units):
        problems.append(f"open ledger rows {view['ledger']} != units of running servers {sorted(units)}")
    free = _free_in_form(hub)
    if free != N_GPUS - len(units):
        problems.append(f"the options form says {free} of {N_GPUS} free with {len(units)} running")
    return problems


def message_problems(outcomes: list[SpawnOutcome]) -> list[str]:
    """Failed spawns say what happened and what to do, without raw engine text, wherever shown."""
    problems = []
    for o in outcomes:
        for message in [m for m in (o.refusal or None, o.failure) if m is not None]:
            text = message.removeprefix("Spawn failed: ")
            if not text or RAW.search(text) or len(text) > 400:
                problems.append(f"{o.user} was told: {message!r}")
        if not o.ready and not o.lost and not (o.refusal or o.failure):
            problems.append(f"{o.user}'s spawn ended with no message: {o.end}")
    return problems


def refill(hub: HubProcess, docker_client, view: dict, users: list[str]) -> list[str]:
    """New spawns work, and every unit no running server holds is handed out once more."""
    if len(view["running"]) == N_GPUS:  # all in use: free one, so that a new spawn is tried
        hub.stop_server(next(iter(view["running"].values()))[0])
        view = _view(hub, docker_client)
    free = N_GPUS - sum(1 for _, unit in view["running"].values() if unit)  # the engine's truth
    with cf.ThreadPoolExecutor(max(free, 1)) as pool:
        outcomes = list(pool.map(lambda u: hub.watch_spawn(u, GPU), users[:free]))
    problems = [f"new spawn of {o.user}: {o.end or o.lost}" for o in outcomes if not o.ready]
    view, _, left = wait_settled(hub, docker_client, time.monotonic(), 60)
    problems += [f"after new spawns, {p}" for p in left + unit_problems(hub, view)]
    if len(view["running"]) != N_GPUS:
        problems.append(f"after new spawns, {len(view['running'])} of {N_GPUS} units in use: {view['running']}")
    return problems


# ---- the chaos ------------------------------------------------------------------------


@pytest.fixture
def chaos_hub(hub_factory) -> HubProcess:
    hub = hub_factory({"gpu_inventory": fake_gpus(N_GPUS, "ch"), "gpu_queue_max_wait": QUEUE_WAIT})
    hub.create_users([*USERS, *FRESH, OBSERVER])
    return hub


def _start_spawns(hub: HubProcess, docker_client, pool: cf.ThreadPoolExecutor) -> list[cf.Future]:
    """10 spawns at once; returns once two containers run: the others are being created,
    started or wait in line."""
    futures = [pool.submit(hub.watch_spawn, user, GPU) for user in USERS]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(state == "running" for _, state, _ in _containers(hub, docker_client)) >= 2:
            break
        time.sleep(0.2)
    return futures


def _in_flight(hub: HubProcess) -> int:
    users = hub.api("GET", "/users", params={"limit": 200}).json()
    return sum(1 for u in users if u["servers"].get("", {}).get("pending"))


def _failures(outcomes: list[SpawnOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        for message in {o.refusal, o.failure} - {"", None}:  # the POST's, the stream's
            counts[message] = counts.get(message, 0) + 1
    return counts


def after_chaos(hub: HubProcess, docker_client, outcomes: list[SpawnOutcome], since: float, timeout: float,
                **figures) -> None:
    """Wait for the hub to settle by itself, check every invariant, spawn anew; report, then assert.

    Everything is checked even after a first problem, so one run shows all of them.  If the hub
    does not settle by itself, a user opening the spawn page (which makes the allocator read the
    engine) is tried next, to tell "never" from "only after someone asks".
    """
    view, settle, problems = wait_settled(hub, docker_client, since, timeout)
    figures.update(settle_s=round(settle, 1), settled_by_itself=not problems)
    problems = [f"{timeout:.0f}s after the chaos, {p}" for p in problems]
    if problems:
        _free_in_form(hub)
        view, again, left = wait_settled(hub, docker_client, time.monotonic(), 30)
        figures.update(settled_after_a_form_view=not left, then_settle_s=round(again, 1))
    problems += message_problems(outcomes) + unit_problems(hub, view) + reachable_problems(hub, view)
    gone = [o.user for o in outcomes if o.user not in view["servers"]]
    figures.update(
        ready=sum(o.ready for o in outcomes),
        failed=_failures(outcomes),
        no_answer=sorted(o.user for o in outcomes if o.lost),
        running_after=sorted(u for u, _ in view["running"].values()),
        leftover_containers=sorted(view["leftovers"].values()),
    )
    problems += refill(hub, docker_client, view, gone + FRESH)
    print("\nCHAOS " + json.dumps(figures))
    assert not problems, "\n".join(problems)


@pytest.fixture
def restartable_engine(docker_client) -> engine.Daemon:
    daemon = engine.local_daemon()
    if isinstance(daemon, str):
        unavailable(daemon)
    rigs = docker_client.containers.list(filters={"label": RIG_LABEL})
    if rigs:
        reason = f"a swarm rig is up on this engine ({rigs[0].name}): restarting the engine would kill it"
        if IN_CI:  # in CI the rig is this session's: the swarm tests run after these
            pytest.fail(reason)
        pytest.skip(reason)
    yield daemon
    assert not engine.LOCK.exists() and engine.answering()  # the engine is left fully up


@pytest.mark.engine_restart  # alone, after every other test (deploy/gpuhub-test)
def test_engine_restart_with_spawns_in_flight(docker_client, chaos_hub, restartable_engine):
    hub = chaos_hub
    with cf.ThreadPoolExecutor(len(USERS)) as pool:
        futures = _start_spawns(hub, docker_client, pool)
        in_flight = _in_flight(hub)
        down = engine.restart(restartable_engine)
        restarted = time.monotonic()
        outcomes = [f.result() for f in futures]
    assert in_flight >= 5, "the engine was restarted too late: most spawns were over"
    # the hub stayed up: every user's spawn page got an end, ready or failed
    assert not any(o.lost for o in outcomes), [(o.user, o.lost) for o in outcomes]
    after_chaos(hub, docker_client, outcomes, restarted, SETTLE_TIMEOUT, scenario="engine-restart",
                pending_at_chaos=in_flight, engine_down_s=round(down, 1))


def test_hub_sigkilled_with_spawns_in_flight(docker_client, chaos_hub):
    hub = chaos_hub
    with cf.ThreadPoolExecutor(len(USERS)) as pool:
        futures = _start_spawns(hub, docker_client, pool)
        in_flight = _in_flight(hub)
        hub.kill()  # SIGKILL; its proxy lives on, as in a real crash
        killed = time.monotonic()
        outcomes = [f.result() for f in futures]
    assert in_flight >= 5, "the hub was killed too late: most spawns were over"
    hub.start()
    # the requests died with the hub: users see their server stopped, or up if it was adopted
    after_chaos(hub, docker_client, outcomes, killed, 90, scenario="hub-sigkill", pending_at_chaos=in_flight)
    # and whoever's server did not survive is told so on the hub's pages, once
    running = {u for u in USERS if hub.user(u).get("servers")}
    stopped = [u for u in USERS if u not in running]
    assert stopped, "every cut-off spawn survived: nobody to tell"
    for user in USERS:
        page = _home_settled(hub, user, expect=user in stopped)
        told = "was cut off when the hub restarted" in page
        assert told == (user in stopped), f"{user}: told={told}, server running={user in running}"
    # a new start answers the notice
    first = stopped[0]
    assert hub.spawn(first, {"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready(first)
    assert "was cut off when the hub restarted" not in _home_settled(hub, first, expect=False)


def _home_settled(hub, user: str, expect: bool, timeout: float = 20) -> str:
    """The home page once the notice is (or is not) there: pages read notices off the hub's
    event loop, so a change shows within a couple of seconds."""
    deadline = time.monotonic() + timeout
    while True:
        page = hub.home_page(user)
        if ("was cut off when the hub restarted" in page) == expect or time.monotonic() > deadline:
            return page
        time.sleep(0.5)
