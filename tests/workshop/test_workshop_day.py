"""A workshop day on the multi-node swarm rig, phase by phase, with a JSON report at the end.

The phases share one rig, one hub and one cast (tests/workshop/conftest.py) and run in order;
each asserts what the issue's "What must be shown" says and records its figures in the report.
Latencies are REPORTED, never asserted (a shared 2-core CI machine is no stopwatch): what is
asserted is correctness - each GPU unit held by exactly one user, the rest told their place in
line or refused with a reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from cullerpass import run_pass, start_busy_kernel
from harness import IMAGE
from polling import wait_for
from swarm_rig import SwarmRig
from workshop import (
    ATTENDEES,
    BLOCKED,
    CULLER,
    INSTRUCTOR,
    MEMBERS,
    OUTSIDER,
    POSITION,
    ROSTERED,
    TUTORIAL,
    UNITS,
    WORKERS,
    Attendee,
    join_gpu_worker,
    latest_position,
    mig_gpus,
    press_all,
    quantiles,
    start_node_agents,
    wait_estimates,
)
from workshop_stack import (
    deploy,
    gpuhub_cli,
    hub_container,
    hub_state,
    line_waits,
    remove_stack,
    stack_logs,
)

from gpuhub_spawner.deploy.inhub import FIRST_ANSWER_SECONDS

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.swarm]

state: dict = {}  # what later phases need from earlier ones (the module's phases run in order)


def servers_on_rig(rig: SwarmRig, hub_id: str) -> dict[str, dict]:
    """user -> {unit, node, tasks, memory} of the hub's services, read from the swarm."""
    client = rig.manager_client()
    try:
        nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
        out = {}
        for s in client.services.list(filters={"label": f"org.gpuhub.hub={hub_id}"}):
            labels = s.attrs["Spec"].get("Labels") or {}
            running = [t for t in s.tasks() if t["Status"]["State"] == "running"]
            limits = (s.attrs["Spec"]["TaskTemplate"].get("Resources") or {}).get("Limits") or {}
            out[labels["org.gpuhub.user"]] = {
                "unit": labels.get("org.gpuhub.unit", ""), "tasks": len(running), "memory": limits.get("MemoryBytes"),
                "node": nodes.get(running[0]["NodeID"]) if running else None,
                "container": running[0]["Status"]["ContainerStatus"]["ContainerID"] if running else None,
            }
        return out
    finally:
        client.close()


def held_units(rig: SwarmRig, hub_id: str) -> dict[str, dict]:
    """user -> server of those whose server runs and holds a GPU unit."""
    return {u: s for u, s in servers_on_rig(rig, hub_id).items() if s["tasks"] and s["unit"]}


def assert_each_unit_held_once(held: dict[str, dict]) -> None:
    units = [s["unit"] for s in held.values()]
    assert len(units) == len(set(units)), f"a unit is held twice: {held}"
    assert all(s["tasks"] == 1 for s in held.values()), held


def store_reads(rig: SwarmRig, node: str, path: str) -> str:
    """``path`` in ``node``'s tutorial store (the stack's node-local volume; '' while missing)."""
    code, out = rig.nodes[node].sh(
        f"cat \"$(docker volume inspect -f '{{{{.Mountpoint}}}}' gpuhub_tutorials)/{path}\" 2>/dev/null", check=False)
    return out if code == 0 else ""


def attendee(stack, login: str) -> Attendee:
    return Attendee(login, stack.public_url, stack.verify)


def ready(person: Attendee) -> bool:
    server = person.api("GET", f"/users/{person.login}", timeout=10).json().get("servers", {}).get("")
    return bool(server and server.get("ready"))


# ---- the morning: the stack, the nodes, sign-in, everyone presses Start ---------------------------


def test_the_stack_is_deployed_and_gpu_workers_joined(stack, rig, report):
    out = stack.deploy_output
    assert f"the hub answers at {stack.public_url}/" in out, out[-2000:]
    client = rig.manager_client()
    try:
        nodes = {n.attrs["Description"]["Hostname"]: n.attrs for n in client.nodes.list()}
        services = {s.name for s in client.services.list(filters={"label": "com.docker.stack.namespace=gpuhub"})}
    finally:
        client.close()
    assert sorted(services) == ["gpuhub_caddy", "gpuhub_db", "gpuhub_hub", "gpuhub_prometheus", "gpuhub_registry",
                                "gpuhub_tutorial-mirror"]
    # every GPU worker joined with `gpuhub node setup` and advertises its FAKE MIG instances
    for name, (_index, units) in WORKERS.items():
        resources = nodes[name]["Description"]["Resources"].get("GenericResources") or []
        kinds = [r["NamedResourceSpec"]["Kind"] for r in resources if "NamedResourceSpec" in r]
        assert kinds == ["NVIDIA_MIG_1G_10GB"] * units, (name, resources)
        assert nodes[name]["Status"]["State"] == "ready"
    # the first version of the tutorials reached every GPU node's store (the stack's mirror, no NFS)
    name, text = TUTORIAL
    for node in WORKERS:
        wait_for(lambda node=node: store_reads(rig, node, f"current/{name}") == text, 120,
                 f"the tutorials' first version in {node}'s store")


def test_attendees_sign_in_through_github_over_https(stack, github, browsers, report):
    admin = attendee(stack, INSTRUCTOR)
    assert admin.sign_in(github).ok and admin.signed_in
    assert admin.api("GET", f"/users/{INSTRUCTOR}").json()["admin"] is True
    # the instructor puts the one attendee outside the org on the roster
    assert admin.api("POST", "/users", json={"usernames": [ROSTERED]}).status_code in (201, 409)
    assert ROSTERED in admin.api("GET", "/groups/roster").json()["users"]

    # a sample signs in in a real browser, each in their own; the rest through the REST API
    people = {login: attendee(stack, login) for login in ATTENDEES}
    sample = MEMBERS[:3]
    shown = {}
    for login in sample:
        browser = browsers()
        shown[login] = browser.sign_in(stack.public_url, github, login)
        browser.cookies_for(people[login])
        state.setdefault("browsers", {})[login] = browser
    for login, text in shown.items():
        assert "MIG 1g.10gb" in text and f"{UNITS} of {UNITS} free" in text, (login, text[:500])
    t0 = time.perf_counter()
    rest = [a for login, a in people.items() if login not in sample]
    with ThreadPoolExecutor(10) as pool:
        answers = dict(zip([a.login for a in rest], pool.map(lambda a: a.sign_in(github), rest)))
    took = time.perf_counter() - t0
    not_in = {login: (a.status_code, a.url) for login, a in answers.items() if not people[login].signed_in}
    assert not not_in, not_in
    refused = {}
    for login in (OUTSIDER, BLOCKED):
        a = attendee(stack, login)
        r = a.sign_in(github)
        assert r.status_code == 403 and not a.signed_in, (login, r.status_code, r.text[:300])
        refused[login] = r.status_code
    # the hub verified GitHub's certificate (the test CA, from gpuhub.yaml): no handshake broken off
    assert not github.refused, github.refused
    assert github.url.startswith("https://") and stack.public_url.startswith("https://")
    state["people"], state["admin"], state["sample"] = people, admin, sample
    report.phase("sign_in", attendees=len(people), in_browser=sample, rest_api=len(rest),
                 rest_sign_ins_s=round(took, 2), refused=refused, github=github.url, hub=stack.public_url)


def test_everyone_presses_start_and_each_unit_goes_to_exactly_one(stack, rig, report):
    people, sample = state["people"], state["sample"]
    clicker = sample[-1]  # presses Start in the browser, at the same moment as the others
    others = [a for login, a in people.items() if login != clicker]
    presses, (browser_s, landed, shown) = press_all(others, {"profile": "mig"},
                                                    also=lambda: state["browsers"][clicker].press_start("mig"))
    # the browser shows the progress page, or the form again with the refusal
    assert not shown.startswith("no next page"), (landed, shown)
    assert ("/hub/spawn-pending/" in landed or f"/user/{clicker}/" in landed) != bool(shown), (landed, shown)
    by_user = {p.user: p for p in presses}
    assert not [p for p in presses if p.error], [(p.user, p.error) for p in presses if p.error]
    accepted = [u for u, p in by_user.items() if p.status in (201, 202)] + ([] if shown else [clicker])
    refused = {u: (p.status, p.message) for u, p in by_user.items() if u not in accepted}
    if shown:
        refused[clicker] = (503, shown)
    assert all(status == 503 and msg for status, msg in refused.values()), refused

    # the accepted either get a unit or wait in line, told their place
    def first_news(login: str) -> dict:
        events = people[login].progress(time.monotonic() + 240,
                                        stop=lambda e: bool(POSITION.search(e.get("message", ""))))
        last = events[-1] if events else {}
        m = POSITION.search(last.get("message", ""))
        return {"failed": bool(last.get("failed")), "position": (int(m[1]), int(m[2])) if m else None,
                "last": last.get("message", "")}

    with ThreadPoolExecutor(len(accepted)) as pool:
        news = dict(zip(accepted, pool.map(first_news, accepted)))
    failed = {u: n["last"] for u, n in news.items() if n["failed"]}
    assert not failed, failed
    in_line = {u: n["position"] for u, n in news.items() if n["position"]}
    started = sorted(u for u, n in news.items() if not n["position"])
    for u in started:
        assert ready(people[u]), (u, news[u])
    assert all(1 <= k <= n for k, n in in_line.values()), in_line

    # every unit is held by exactly one user, each server has one running task, on a GPU worker
    held = wait_for(lambda: (lambda h: h if len(h) == UNITS else None)(held_units(rig, stack.hub_id)), 60,
                    f"{UNITS} servers holding units")
    assert sorted(held) == started, (sorted(held), started)
    assert_each_unit_held_once(held)
    assert all(s["unit"].startswith("MIG-") and s["node"] in WORKERS for s in held.values()), held
    assert len(in_line) + len(refused) == len(ATTENDEES) - UNITS, (in_line, refused)

    times = [p.first_answer_s for p in presses]
    report.phase(
        "burst", attendees=len(ATTENDEES), units=UNITS, started=len(started), in_line=len(in_line),
        refused=len(refused), refusals=sorted({m for _s, m in refused.values()}),
        positions_first_told=sorted(in_line.values()),
        first_answer_rest_api=quantiles(times), first_answers_within_1s=sum(t < 1.0 for t in times),
        first_answer_note=f"the stack's hub answers a POST that starts or waits in line after slow_spawn_timeout "
                          f"({FIRST_ANSWER_SECONDS} s, gpuhub_spawner/deploy/inhub.py) and the GitHub re-check runs "
                          "inside the spawn (hub/auth.py); the rest is 30 requests at once through Caddy and one hub "
                          "process on a 2-core machine",
        first_answer_browser_s=round(browser_s, 3), browser_timing=state["browsers"][clicker].last_timing,
        browser_landed_on=landed.split("?")[0], browser_shown=shown,
        per_node={n: sum(1 for s in held.values() if s["node"] == n) for n in WORKERS},
    )
    state["held"], state["in_line"] = held, in_line


# ---- the day: the author's fix, a node added and one drained, the admin's quota, the hub killed ---


def webhook(stack, body: bytes, secret: bytes) -> requests.Response:
    """A GitHub push webhook call to the stack's tutorial-sync service, signed with ``secret``."""
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return requests.post(stack.public_url + "/services/tutorial-sync/webhook", data=body, verify=stack.verify,
                         headers={"X-Hub-Signature-256": signature, "X-GitHub-Event": "push",
                                  "Content-Type": "application/json"}, timeout=30)


def test_the_authors_commit_is_published_by_the_signed_webhook_and_running_servers_on_every_node_see_it(
    stack, rig, report
):
    name, v1 = TUTORIAL
    readers: dict[str, tuple[str, dict]] = {}  # one running server per GPU node
    for user, server in sorted(held_units(rig, stack.hub_id).items()):
        readers.setdefault(server["node"], (user, server))
    assert len(readers) >= 2, readers
    reads = lambda server: in_server(rig, server, f"cat ~/tutorials/{name} 2>/dev/null || true")  # noqa: E731
    assert {node: reads(s) for node, (_u, s) in readers.items()} == {node: v1.strip() for node in readers}
    v2 = "print('welcome, v2: the fixed first cell')\n"
    stack.author.write(name, v2)
    sha = stack.author.commit_and_push("fix the first cell")
    body = json.dumps({"ref": "refs/heads/main", "after": sha, "repository": {"full_name": "acme/tutorials"}}).encode()
    secret = (stack.secrets_dir / "webhook_secret").read_bytes().strip()
    forged = webhook(stack, body, b"not-the-secret")
    assert forged.status_code == 401, forged.text
    t0 = time.monotonic()
    signed = webhook(stack, body, secret)
    assert signed.status_code == 202, signed.text  # the sync polls hourly: this call is what publishes
    seen = {}
    for node, (user, server) in sorted(readers.items()):
        wait_for(lambda server=server: reads(server) == v2.strip(), 120,
                 f"{user}'s running server on {node} reading the new {name}")
        seen[node] = round(time.monotonic() - t0, 1)
    assert store_reads(rig, sorted(readers)[0], f"versions/{sha}/{name}") == v2
    state["tutorial"] = (name, v1, v2)
    report.phase("tutorials", commit=sha, webhook={"forged": forged.status_code, "signed": signed.status_code},
                 poll_interval_s=3600, servers_read_new_file_after_s=seen,
                 readers={node: user for node, (user, _s) in readers.items()})


# ---- the day goes on -----------------------------------------------------------------------


def test_a_new_node_serves_the_queue_and_a_drained_nodes_users_are_told(stack, rig, report):
    people = state["people"]
    line = {u: latest_position(people[u]) for u in state["in_line"]}
    line = {u: p for u, p in line.items() if p}
    first_two = sorted(line, key=lambda u: line[u][0])[:2]
    assert [line[u][0] for u in first_two] == [1, 2], line
    t0 = time.monotonic()
    join_gpu_worker(rig, "gpu-4", 4, mig_gpus("4a", 2), image=IMAGE)
    rig.wait_nodes_ready(["gpu-4"])
    served = wait_for(lambda: (lambda h: h if {u for u, s in h.items() if s["node"] == "gpu-4"} == set(first_two)
                               else None)(held_units(rig, stack.hub_id)), 180,
                      f"the first two in line ({first_two}) served on the new node")
    assert all(wait_for(lambda u=u: ready(people[u]), 120, f"{u} ready") for u in first_two)
    assert_each_unit_held_once(served)
    joined_to_served = time.monotonic() - t0

    # the operator drains gpu-4: its users' servers stop, and they are told
    from gpuhub_spawner.cli import main as gpuhub

    assert gpuhub(["node", "drain", "gpu-4", "--yes", "--docker-host", rig.manager.url]) == 0
    for u in first_two:
        wait_for(lambda u=u: not people[u].api("GET", f"/users/{u}").json().get("servers"), 120,
                 f"{u}'s server on the drained node reported stopped")
    # told: their next Start says where their files are and what they can do (no silent move)
    answers = {u: people[u].press_start_told({"profile": "mig"}) for u in first_two}
    told = {u: a.message for u, a in answers.items()}
    assert all(a.refused and "gpu-4" in a.message and "drained" in a.message for a in answers.values()), told
    assert_each_unit_held_once(held_units(rig, stack.hub_id))
    report.phase("node_added_and_drained", first_in_line_served_on_new_node=first_two,
                 join_to_served_s=round(joined_to_served, 1), drained_users_told=told)
    state["drained"] = first_two


def test_an_admin_raises_a_group_quota_on_the_gpu_hub_page_and_the_next_spawn_gets_it(stack, rig, github,
                                                                                       browsers, report):
    from selenium.webdriver.common.by import By
    from workshop import TEAM

    browser = browsers()
    browser.sign_in(stack.public_url, github, INSTRUCTOR)
    form = browser.open_page(stack.public_url + "/services/gpuhub-admin/quotas",
                             (By.XPATH, f"//h3[text()='{TEAM}']/following-sibling::form[1]"), f"the quota form of {TEAM}")
    field = form.find_element(By.NAME, "mem_limit")
    field.clear()
    field.send_keys("2G")
    form.find_element(By.TAG_NAME, "button").click()
    admin = state["admin"]
    wait_for(lambda: admin.api("GET", f"/groups/{TEAM}").json()["properties"].get("mem_limit") in (2 * 1024**3, "2G"),
             30, "the group's quota saved")
    # a member whose server was stopped starts again (CPU only: the GPU units are all taken; their
    # files' node is drained, so they choose to start elsewhere)
    member = state["drained"][0]
    person = state["people"][member]
    r = person.press_start({"profile": "cpu", "placement": "anywhere"})
    assert r.status in (201, 202), (r.status, r.message)
    wait_for(lambda: ready(person), 180, f"{member}'s new server ready")
    memory = servers_on_rig(rig, stack.hub_id)[member]["memory"]
    assert memory == 2 * 1024**3, memory
    report.phase("quota_raised_on_gpu_hub_page", group=TEAM, mem_limit="1G -> 2G", next_spawn_memory_bytes=memory)


def in_server(rig: SwarmRig, server: dict, cmd: str) -> str:
    """Run ``cmd`` as the server's user in its container, on the worker that runs it."""
    client = rig.nodes[server["node"]].client()
    try:
        code, out = client.containers.get(server["container"]).exec_run(["sh", "-c", cmd], user="1000")
    finally:
        client.close()
    assert code == 0, out.decode(errors="replace")
    return out.decode().strip()


def stop(person: Attendee) -> None:
    r = person.api("DELETE", f"/users/{person.login}/server")
    assert r.status_code in (202, 204), r.text
    wait_for(lambda: not person.api("GET", f"/users/{person.login}").json().get("servers"), 120,
             f"{person.login}'s server stopped")


def test_scratch_stays_on_its_node_and_a_full_home_node_offers_the_choice(stack, rig, report):
    people = state["people"]
    held = held_units(rig, stack.hub_id)
    user, server = next((u, s) for u, s in sorted(held.items()) if s["node"] in WORKERS)
    node, size = server["node"], WORKERS[server["node"]][1]
    proof = in_server(rig, server, "echo kept-$$-$(date +%s) > ~/scratch/proof.txt && cat ~/scratch/proof.txt")
    # the attendee edits their copy of the tutorial (~/my-tutorials, their own volume)
    name, _v1, v2 = state["tutorial"]
    edited = in_server(rig, server, f"echo '# my note' >> ~/my-tutorials/{name} && cat ~/my-tutorials/{name}")
    assert edited.endswith("# my note"), edited
    stop(people[user])
    # the first in line takes the unit freed on that node: the node holding the user's files is full
    wait_for(lambda: sum(1 for s in held_units(rig, stack.hub_id).values() if s["node"] == node) == size, 180,
             f"the freed unit on {node} given to the first in line")
    full = people[user].press_start_told({"profile": "mig"})
    assert full.refused and f"are on {node}" in full.message, (full.status, full.message)
    assert "Wait in line" in full.message and "another node" in full.message, full.message

    # the line ends for the day; a neighbour on that node stops; the user starts again and is
    # placed on the node holding their files, which are all there
    for u in state["in_line"]:
        if people[u].api("GET", f"/users/{u}").json().get("servers"):
            stop(people[u])
    neighbour = next(u for u, s in held_units(rig, stack.hub_id).items() if s["node"] == node and u != user)
    stop(people[neighbour])
    again = people[user].press_start({"profile": "mig"})
    assert again.status in (201, 202), (again.status, again.message)
    wait_for(lambda: ready(people[user]), 180, f"{user} ready again")
    back = servers_on_rig(rig, stack.hub_id)[user]
    assert back["node"] == node, back
    assert in_server(rig, back, "cat ~/scratch/proof.txt") == proof
    assert in_server(rig, back, f"cat ~/my-tutorials/{name}") == edited  # the edit survives the restart
    assert in_server(rig, back, f"cat ~/tutorials/{name}") == v2.strip()
    beside = in_server(rig, back, f"cd ~/my-tutorials && ls {name.rsplit('.', 1)[0]}.upstream.* 2>/dev/null || true")
    report.phase("storage_follows", user=user, node=node, scratch_kept=True, full_node_told=full.message)
    report.phase("tutorial_copy_kept", user=user, edited_file=f"~/my-tutorials/{name}", edit_kept=True,
                 newer_upstream_saved_beside=beside or None)


def test_the_hub_container_is_killed_and_swarm_brings_it_back(stack, rig, report):
    people = state["people"]
    before = held_units(rig, stack.hub_id)
    assert before
    victim = hub_container(rig)
    t0 = time.monotonic()
    victim.kill()
    wait_for(lambda: hub_container_id(rig) not in ("", victim.id), 120, "swarm starts a new hub container")
    back = wait_for(lambda: healthy(stack), 300, "the hub answers again through Caddy")
    took = time.monotonic() - t0
    after = held_units(rig, stack.hub_id)
    # running servers kept their GPUs: same users, same units, same containers
    assert {u: (s["unit"], s["container"]) for u, s in after.items()} == \
        {u: (s["unit"], s["container"]) for u, s in before.items()}
    assert_each_unit_held_once(after)
    for u in list(after)[:5]:
        assert wait_for(lambda u=u: ready(people[u]), 60, f"{u} still ready after the hub came back")
    # every running server checks each request's token with the hub API (by its alias on the user
    # network): each must reach the new hub, at its new address, or its user is locked out of
    # JupyterLab ("Failed to connect to Hub API"); asked as the user asks it, through Caddy
    reached: dict[str, float] = {}
    for u, server in sorted(after.items()):
        said: list[str] = []
        token = own_token(people[u])
        try:
            wait_for(lambda u=u, token=token, said=said: said.append(server_status(stack, u, token)) or said[-1] == "200",
                     120, f"{u}'s server on {server['node']} answering its user (the new hub checks the token)")
        except AssertionError as e:
            raise AssertionError(f"{e}; it said: {said[-2:]}; from inside it: {hub_api_from(rig, server)}") from None
        reached[u] = round(time.monotonic() - t0, 1)
    report.phase("hub_killed", restarted_and_answering_s=round(took, 1), servers_kept=len(after), answered=back,
                 servers_reached_new_hub_api_after_s=quantiles(list(reached.values())))


#: run in a user's server: the hub API's status by the name servers are given, or why not
HUB_API_FROM_SERVER = """
import socket, urllib.request as u
try:
    print(u.urlopen("http://gpuhub-hub:8081/hub/api", timeout=5).status)
except Exception as e:
    try:
        where = sorted({a[4][0] for a in socket.getaddrinfo("gpuhub-hub", 8081)})
    except OSError as dns:
        where = f"no address: {dns}"
    print(f"{type(e).__name__}: {e} (gpuhub-hub is {where})")
"""


def server_status(stack, user: str, token: str) -> str:
    """``/user/<user>/api/status`` through Caddy with the user's own token: "200", or what came."""
    try:
        r = requests.get(f"{stack.public_url}/user/{user}/api/status", headers={"Authorization": f"token {token}"},
                         verify=stack.verify, timeout=15)
    except requests.RequestException as e:
        return f"{type(e).__name__}: {e}"[:200]
    return "200" if r.status_code == 200 else f"{r.status_code}: {r.text[:200]}"


def hub_api_from(rig: SwarmRig, server: dict) -> str:
    return in_server(rig, server, f"python3 -c '{HUB_API_FROM_SERVER}'")


def hub_container_id(rig: SwarmRig) -> str:
    try:
        return hub_container(rig).id
    except AssertionError:
        return ""


def healthy(stack) -> bool:
    import requests

    session = requests.Session()
    session.trust_env = False
    try:
        return session.get(stack.public_url + "/hub/health", verify=stack.verify, timeout=5).status_code == 200
    except requests.RequestException:
        return False


# ---- late in the day: the culler reclaims an idle GPU server for the line ----------------------

TRAINING = "import time\nfor _ in range(3000):\n    time.sleep(0.1)\n"  # a kernel at work, its tab closed


def culler_log(rig: SwarmRig) -> str:
    """The hub service's last lines about the culler and the node agents."""
    out = stack_logs(rig, tail=400, services=("gpuhub_hub",))
    lines = [line for line in out.splitlines() if any(w in line.lower() for w in ("agent", "probe", "cull"))]
    return "\n".join(lines[-40:])


def own_token(person: Attendee) -> str:
    """A token the person makes for themselves (the hub's token page does the same)."""
    r = person.api("POST", f"/users/{person.login}/tokens", json={"note": "workshop day", "expires_in": 3600})
    assert r.status_code in (200, 201), r.text
    return r.json()["token"]


def agent_answers(url: str, token: str) -> bool:
    try:
        return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def join_the_line(people: dict[str, Attendee], candidates: list[str], n: int) -> list[str]:
    """Candidates press Start one after the other until ``n`` of them wait in line (a free unit
    goes to whoever presses first; "anywhere": one whose files are on a full node takes any
    unit); returns those in line, first in line first (the line's own order: fair share).

    Who waits is read again from everyone's progress after each press: one seen in line a
    moment ago may have been given a unit coming free since (it is then waited for, ready)."""
    pressed: list[str] = []
    for login in candidates:
        r = people[login].press_start({"profile": "mig", "placement": "anywhere"})
        assert r.status in (201, 202), (login, r.status, r.message)
        pressed.append(login)
        line = {u: place for u in pressed if (place := latest_position(people[u]))}
        for u in pressed:
            if u not in line:
                wait_for(lambda u=u: ready(people[u]), 180, f"{u} given a free unit")
        if len(line) == n:
            assert sorted(line.values()) == [(k, n) for k in range(1, n + 1)], line  # one line, only them
            return sorted(line, key=lambda u: line[u][0])
    raise AssertionError(f"fewer than {n} of {candidates} wait in line")


def test_an_idle_gpu_server_is_warned_then_reclaimed_a_busy_kernel_survives_the_first_in_line_gets_the_unit(
    stack, rig, report
):
    from gpuhub_spawner.node.kernel_probe import NOTICE_PATH

    people, admin = state["people"], state["admin"]
    # the node agents, as `gpuhub node agent install` starts them with the stack's agent token
    agent_token = (stack.secrets_dir / "agent_token").read_text().strip()
    urls = start_node_agents(rig, list(WORKERS), agent_token, stack.hub_id)
    wait_for(lambda: all(agent_answers(u, agent_token) for u in urls), 60, "the node agents answer")
    idle_now = [u for u in state["in_line"] if u not in state["drained"]
                and not people[u].api("GET", f"/users/{u}").json().get("servers")]
    waiting = join_the_line(people, idle_now, 2)
    held = held_units(rig, stack.hub_id)
    assert len(held) == UNITS, held
    by_node: dict[str, list[str]] = {}
    for user, server in sorted(held.items()):
        by_node.setdefault(server["node"], []).append(user)
    trainer_node, idler_node = sorted(by_node)[:2]
    trainer, idler = by_node[trainer_node][0], by_node[idler_node][0]
    # the others use their servers (a keep-alive from each, with their own token, before each pass)
    others = {u: own_token(people[u]) for u in held if u not in (trainer, idler)}
    culler = SimpleNamespace(culler=stack.public_url + "/services/gpuhub-culler/", token=own_token(admin),
                             url=stack.public_url, verify=stack.verify)
    start_busy_kernel(culler, trainer, own_token(people[trainer]), TRAINING)

    def culler_pass() -> dict[str, tuple[str, str]]:
        for user, token in others.items():
            r = requests.post(culler.culler + "api/keepalive", headers={"Authorization": f"token {token}"},
                              verify=stack.verify, timeout=30)
            assert r.ok, (user, r.status_code, r.text)
        return {u: (d["action"], d["reason"]) for (u, name), d in run_pass(culler).items() if not name}

    def until(action: str, timeout: float) -> dict[str, tuple[str, str]]:
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            decided = culler_pass()
            seen.append(decided.get(idler))
            if seen[-1] and seen[-1][0] == action:
                return decided
            time.sleep(1)
        raise AssertionError(f"no {action} of {idler} within {timeout}s; its decisions: {seen[-3:]}; "
                             f"the hub's log of the culler and the agents:\n{culler_log(rig)}")

    t0 = time.monotonic()
    warned = until("warn", 90)
    # the culler asks a server about its kernels only when its other signals say idle: the trainer,
    # whose kernel was just started through the hub, is kept for that until its hub activity ages
    assert warned[idler] == ("warn", "idle") and warned[trainer][0] == "keep", warned
    assert not [u for u in others if warned.get(u, ("missing",))[0] != "keep"], warned
    notice = wait_for(lambda: in_server(rig, held[idler], f"cat {NOTICE_PATH} 2>/dev/null || true"), 30,
                      f"the warning in {idler}'s container on {idler_node}")
    assert "about to be stopped" in notice and "idle" in notice, notice
    assert not in_server(rig, held[trainer], f"cat {NOTICE_PATH} 2>/dev/null || true")
    culled = until("cull", 60)
    assert culled[idler] == ("cull", "idle") and culled[trainer][0] == "keep", culled
    assert not [u for u in others if culled.get(u, ("missing",))[0] != "keep"], culled
    wait_for(lambda: not people[idler].api("GET", f"/users/{idler}").json().get("servers"), 120,
             f"{idler}'s idle server stopped")
    reclaimed = time.monotonic() - t0
    # the freed unit goes to the first in line, the second waits on, now first
    places = {u: latest_position(people[u]) for u in waiting}
    first, second = waiting
    try:
        wait_for(lambda: ready(people[first]), 180, f"{first} (first in line) given the freed unit")
    except AssertionError as e:
        now = {u: latest_position(people[u]) for u in waiting}
        raise AssertionError(f"{e}; places before the cull {places}, now {now}; units held now: "
                             f"{ {u: (s['node'], s['unit']) for u, s in held_units(rig, stack.hub_id).items()} }") from None
    after = held_units(rig, stack.hub_id)
    assert first in after and after[first]["unit"] == held[idler]["unit"], (after.get(first), held[idler])
    assert_each_unit_held_once(after)
    now_at = latest_position(people[second])
    assert second not in after and now_at and now_at[0] == 1, now_at
    assert trainer in after and ready(people[trainer])

    def kept_for_its_kernel() -> tuple[str, str] | None:
        decided = culler_pass()[trainer]
        assert decided[0] == "keep", decided  # never warned while its kernel trains
        return decided if decided[1] == "kernel-busy" else None

    # once the trainer's own activity is older than the idle limit, the culler asks its server
    busy = wait_for(kept_for_its_kernel, CULLER["idle_gpu_timeout"] + 60, f"{trainer} kept for its busy kernel")
    stop(people[second])  # the line ends for the day
    report.phase("culler", idle_server=idler, node=idler_node, warned_then_culled_s=round(reclaimed, 1),
                 notice=notice.strip()[:200], busy_kernel_kept={trainer: busy},
                 others_kept=len(others), freed_unit_to_first_in_line=first, second_in_line_now=now_at,
                 timings=dict(CULLER, note="no timed passes; each pass asked for with an admin's token"))


def test_the_likely_waits_told_in_line_against_the_waits_people_had(stack, rig, report):
    """Issue 15's wait estimates, measured: each spawn that waited in line today is a row of the
    hub's record of waits, with the range it was first told and how long it waited."""
    measured = wait_estimates(line_waits(rig))
    served = [e for e in measured["entries"] if e["outcome"] == "unit"]
    # the morning's line and the culler phase's first in line waited and were given a unit
    assert served, {k: v for k, v in measured.items() if k != "entries"}
    assert all(e["waited_s"] >= 0 and e["place"] >= 1 for e in measured["entries"]), measured["entries"]
    report.phase("wait_estimates", **measured,
                 note="the stack is new this morning: until servers of a pool have finished (5 holds), the line "
                      "says it has no estimate rather than inventing one; waits here follow the test's steps")


# ---- the evening: backup, a fresh stack, restore; upgrade --------------------------------------


def test_backup_then_restore_onto_a_fresh_stack_keeps_users_groups_quotas_usage(stack, rig, tmp_path, report):
    from workshop import TEAM

    before = hub_state(rig)
    assert set(ATTENDEES) <= set(before["users"]) and before["usage"] >= UNITS, before
    assert before["groups"][TEAM].get("mem_limit"), before["groups"]  # the quota the admin raised
    archive = tmp_path / "workshop-day.tar.gz"
    done = gpuhub_cli(rig, "backup", "--stack", "gpuhub", "--out", str(archive))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    remove_stack(rig)  # a fresh stack: no services, volumes, secrets or configs of the old one
    again = deploy(rig, stack.config, {"GITHUB_CLIENT_SECRET": stack.github_secret}, log=tmp_path / "deploy.log")
    assert again.code == 0, again.output[-3000:]
    fresh = hub_state(rig)
    assert not set(ATTENDEES) & set(fresh["users"]) and fresh["usage"] == 0, fresh
    t0 = time.monotonic()
    restored = gpuhub_cli(rig, "restore", str(archive), "--stack", "gpuhub", "--stop-hub", "--yes",
                          "--config", str(stack.config))
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    wait_for(lambda: healthy(stack), 300, "the restored hub answers through Caddy")
    after = hub_state(rig)
    assert after == before, {"before": before, "after": after}
    # and the attendees' sessions of the day still sign them in (the cookie secret came back too)
    person = state["people"][MEMBERS[5]]
    assert person.api("GET", f"/users/{person.login}").status_code == 200
    report.phase("backup_restore", archive_bytes=archive.stat().st_size, fresh_deploy_s=round(again.seconds, 1),
                 restore_s=round(time.monotonic() - t0, 1), users=len(after["users"]), groups=len(after["groups"]),
                 usage_rows=after["usage"], kept="users, groups with their quota properties, memberships, usage")


def test_upgrade_keeps_every_row(stack, rig, tmp_path, report):
    before = hub_state(rig)
    done = gpuhub_cli(rig, "upgrade", "--stack", "gpuhub", "--out", str(tmp_path / "pre-upgrade.tar.gz"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every row of the hub+usage database kept" in done.stdout, done.stdout[-2000:]
    wait_for(lambda: healthy(stack), 300, "the upgraded hub answers through Caddy")
    assert hub_state(rig) == before
    report.phase("upgrade", said=[line for line in done.stdout.splitlines() if "kept" in line][:3])

