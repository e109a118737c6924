"""The "GPU Hub" admin service as a real hub-managed service, against a real JupyterHub.

One hub for the module: the service runs with exactly the role and service entry that
jupyterhub_config.py is meant to carry.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import pytest
import requests
from harness import HubProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuhub_spawner.storage.ledger import UsageLedger
from hub_services.admin.roster import parse_roster

ADMIN_PASSWORD = "admin-" + "x" * 40

pytestmark = [pytest.mark.docker, pytest.mark.hub]


# the service and its role come from jupyterhub_config.py itself, as in production
EXTRA = f"""
c.Authenticator.admin_users = {{"boss"}}
c.SharedPasswordAuthenticator.admin_password = {ADMIN_PASSWORD!r}
"""


@pytest.fixture(scope="module")
def hub(docker_client, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("admin-hub")
    usage_db = f"sqlite:///{workdir / 'data' / 'gpuhub-usage.sqlite'}"
    hub = HubProcess(workdir, {}, EXTRA)
    hub.usage_db = usage_db
    with hub.kept_for_tests(docker_client):
        hub.start(
            env={
                "GPUHUB_USAGE_DB_URL": usage_db,
                "GPUHUB_QUOTA_DEFAULTS": '{"gpu_hours_per_period": 10, "period": "week"}',
            }
        )
        hub.base = hub.url + "/services/gpuhub-admin/"
        _wait_service(hub)
        hub.create_users(["boss", "pleb"])
        hub.admin_token = _token(hub, "boss")
        hub.user_token = _token(hub, "pleb")
        yield hub


def _wait_service(hub: HubProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(hub.base + "api/usage", timeout=5).status_code == 403:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"admin service did not answer:\n{hub.log_tail()}")


def _token(hub: HubProcess, user: str) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": "admin-service test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def call(hub, method, path, token=None, **kw):
    token = hub.admin_token if token is None else token
    headers = {**({"Authorization": f"token {token}"} if token else {}), **kw.pop("headers", {})}
    kw.setdefault("timeout", 30)
    kw.setdefault("allow_redirects", False)
    return requests.request(method, hub.base + path, headers=headers, **kw)


ROUTES = [
    ("GET", ""),
    ("GET", "quotas"),
    ("GET", "roster"),
    ("POST", "roster"),
    ("GET", "charts"),
    ("POST", "quotas/groups/g1"),
    ("POST", "quotas/users"),
    ("POST", "quotas/users/pleb"),
    ("POST", "quotas/users/pleb/delete"),
    ("POST", "servers/pleb/stop"),
    ("POST", "servers/pleb/named/stop"),
    ("GET", "api/allocations"),
    ("GET", "api/usage"),
    ("GET", "api/charts"),
    ("GET", "api/quotas"),
    ("PUT", "api/quotas/groups/g1"),
    ("PUT", "api/quotas/users/pleb"),
    ("DELETE", "api/quotas/users/pleb"),
    ("POST", "api/roster"),
    ("POST", "api/servers/pleb/stop"),
    ("POST", "api/servers/pleb/named/stop"),
    ("GET", "help"),  # the help routes also let in instructors (tests/hub_services/test_admin_help.py)
    ("POST", "help/open/pleb"),
    ("POST", "help/close/pleb/named"),
    ("GET", "api/help"),
    ("POST", "api/help/pleb"),
    ("DELETE", "api/help/pleb/named"),
]


@pytest.mark.parametrize("method, path", ROUTES, ids=[f"{m} /{p}" for m, p in ROUTES])
def test_only_admins_get_in(hub, method, path):
    body = {"max_gpu_units": 1} if "quotas" in path else "boss,g1"
    for token in (hub.user_token, hub.token):  # a plain user, and a service
        r = call(hub, method, path, token, data=json.dumps(body))
        assert r.status_code == 403, (token == hub.token, r.status_code, r.text[:300])
    r = call(hub, method, path, "", data=json.dumps(body))  # nobody: 403, or the login redirect
    assert r.status_code in ((302, 403) if method == "GET" and not path.startswith("api/") else (403,))
    assert hub.user("pleb")["groups"] == []


@pytest.mark.parametrize("path", ["", "quotas", "roster", "api/allocations", "api/usage", "api/quotas"])
def test_admin_token_reads_every_page(hub, path):
    r = call(hub, "GET", path)
    assert r.status_code == 200, r.text[:500]
    if path.startswith("api/"):
        r.json()
    else:
        assert "<h1>" in r.text
        # inside the hub's own page.html: its navigation bar and static files
        assert '<span id="jupyterhub-logo" class="navbar-brand">' in r.text
        assert 'href="/hub/static/css/style.min.css"' in r.text and '<span class="me-1">boss</span>' in r.text
        assert requests.get(hub.url + "/hub/static/css/style.min.css", timeout=10).ok


def test_roster_import_applies_good_rows_and_reports_bad_ones(hub):
    csv = "\n".join(
        [
            "github_username,group",
            "Alice-A,team-x",  # 2
            "bob7,team-y",  # 3
            "bad--name,team-x",  # 4
            "-lead,team-x",  # 5
            "alice-a,team-x",  # 6 duplicate of 2
            "carol,bad group",  # 7
            "dave",  # 8
            "x" * 40 + ",team-x",  # 9
            "erin,team-x",  # 10
        ]
    )
    r = call(hub, "POST", "api/roster", data=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    report = r.json()
    assert [(a["line"], a["github_username"], a["group"]) for a in report["applied"]] == [
        (2, "alice-a", "team-x"),
        (3, "bob7", "team-y"),
        (10, "erin", "team-x"),
    ]
    rejected = {x["line"]: x["reason"] for x in report["rejected"]}
    assert sorted(rejected) == [4, 5, 6, 7, 8, 9]
    assert "duplicate of line 2" in rejected[6] and "group name" in rejected[7]
    assert sorted(hub.api("GET", "/groups/team-x").json()["users"]) == ["alice-a", "erin"]
    assert hub.api("GET", "/groups/team-y").json()["users"] == ["bob7"]
    for missing in ("carol", "dave", "bad--name", "x" * 40):
        assert hub.api("GET", f"/users/{missing}").status_code == 404
    # again, as JSON: nothing new, nothing half-done
    again = call(
        hub, "POST", "api/roster", json=[["alice-a", "team-x"], {"github_username": "fay", "group": "!"}]
    )
    assert [a["line"] for a in again.json()["applied"]] == [1]
    assert again.json()["rejected"][0]["line"] == 2
    assert hub.api("GET", "/users/fay").status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"max_gpu_units": -1}, "max_gpu_units", id="negative"),
        pytest.param({"cpu_limit": "lots"}, "cpu_limit", id="non-numeric"),
        pytest.param({"gpu_hours_per_period": True}, "gpu_hours_per_period", id="boolean"),
        pytest.param({"max_gpus": 2}, "max_gpus", id="unknown"),
        pytest.param(["max_gpu_units"], "quota", id="not-an-object"),
    ],
)
def test_bad_quota_edits_are_400_naming_the_field(hub, body, field):
    for path in ("api/quotas/groups/quota-g", "api/quotas/users/boss"):
        r = call(hub, "PUT", path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field and field in r.json()["error"]
    assert call(hub, "PUT", "api/quotas/users/boss", data=b"{not json").status_code == 400


def test_group_quota_edit_merges_into_properties(hub):
    assert hub.api("POST", "/groups/quota-g").status_code in (201, 409)
    r = hub.api(
        "PUT", "/groups/quota-g/properties", json={"note": "keep me", "max_gpu_units": 1, "priority": 3}
    )
    assert r.status_code == 200, r.text
    r = call(
        hub, "PUT", "api/quotas/groups/quota-g", json={"max_gpu_units": "2", "period": "Day", "priority": ""}
    )
    assert r.status_code == 200, r.text
    props = hub.api("GET", "/groups/quota-g").json()["properties"]
    assert props == {"note": "keep me", "max_gpu_units": 2, "period": "day"}
    assert call(hub, "GET", "api/quotas").json()["groups"]["quota-g"] == {"max_gpu_units": 2, "period": "day"}
    assert call(hub, "PUT", "api/quotas/groups/no-such-group", json={}).status_code == 404


def test_a_groups_gpu_share_and_reservations_are_set_checked_and_removed_from_the_quota_form(hub):
    assert hub.api("POST", "/groups/share-g").status_code in (201, 409)
    # as the Quotas page's form sends it: JSON text in one field, beside the quota fields
    r = call(hub, "PUT", "api/quotas/groups/share-g", json={"gpu_share": '{"gpu": 2, "mig-1g.10gb": {"burst": "3"}}',
                                                            "max_gpu_units": "1"})
    assert r.status_code == 200, r.text
    props = hub.api("GET", "/groups/share-g").json()["properties"]
    assert props == {"max_gpu_units": 1, "gpu_share": {"gpu": {"guaranteed": 2, "burst": None},
                                                       "mig-1g.10gb": {"guaranteed": 0, "burst": 3}}}
    assert call(hub, "GET", "api/quotas").json()["shares"]["share-g"] == props["gpu_share"]
    r = call(hub, "PUT", "api/quotas/groups/share-g", json={"gpu_share": {"gpu": {"guaranteed": 3, "burst": 1}}})
    assert r.status_code == 400 and r.json()["field"] == "gpu_share", r.text
    assert "burst 1 is below guaranteed 3" in r.json()["error"]
    assert hub.api("GET", "/groups/share-g").json()["properties"] == props  # a refused edit changes nothing
    assert call(hub, "PUT", "api/quotas/groups/share-g", json={"gpu_share": ""}).status_code == 200
    assert hub.api("GET", "/groups/share-g").json()["properties"] == {"max_gpu_units": 1}
    # reservations: JSON text from the form, stored as read back; a bad one is a 400 naming it
    r = call(hub, "PUT", "api/quotas/groups/share-g",
             json={"gpu_reservations": '[{"pool": "gpu", "units": 2, "weekly": "tue 9:00-12:00", "tz": "Europe/Berlin"}]'})
    assert r.status_code == 200, r.text
    stored = [{"pool": "gpu", "units": 2, "tz": "Europe/Berlin", "weekly": "Tue 09:00-12:00"}]
    assert hub.api("GET", "/groups/share-g").json()["properties"]["gpu_reservations"] == stored
    assert call(hub, "GET", "api/quotas").json()["reservations"]["share-g"] == stored
    r = call(hub, "PUT", "api/quotas/groups/share-g", json={"gpu_reservations": [{"pool": "gpu", "units": 1}]})
    assert r.status_code == 400 and r.json()["field"] == "gpu_reservations", r.text
    assert "give either weekly, or start and end" in r.json()["error"]
    assert call(hub, "PUT", "api/quotas/groups/share-g", json={"gpu_reservations": ""}).status_code == 200
    assert hub.api("GET", "/groups/share-g").json()["properties"] == {"max_gpu_units": 1}
    # a share is a group's: a user's override has no such field
    r = call(hub, "PUT", "api/quotas/users/boss", json={"gpu_share": {"gpu": 1}})
    assert r.status_code == 400 and r.json()["field"] == "gpu_share"


def test_user_override_round_trip_and_usage(hub):
    ledger = UsageLedger(hub.usage_db)
    holder = "test-" + secrets.token_hex(3)
    ledger.start("boss", "", "GPU-test-0000", "gpu", holder=holder)
    try:
        r = call(hub, "PUT", "api/quotas/users/boss", json={"gpu_hours_per_period": "5", "period": "total"})
        assert r.status_code == 200, r.text
        assert call(hub, "GET", "api/quotas").json()["overrides"]["boss"] == {
            "gpu_hours_per_period": 5.0,
            "period": "total",
        }
        usage = {u["user"]: u for u in call(hub, "GET", "api/usage").json()}
        assert usage["boss"]["period"] == "total" and usage["boss"]["gpu_seconds"] >= 0
        assert 0 < usage["boss"]["budget_left_seconds"] <= 5 * 3600
        assert usage["pleb"]["budget_left_seconds"] == 10 * 3600  # the defaults
        allocations = call(hub, "GET", "api/allocations").json()
        assert {"user": "boss", "unit": "GPU-test-0000", "pool": "gpu"}.items() <= allocations[-1].items()
        assert "GPU-test-0000" in call(hub, "GET", "").text
        assert call(hub, "DELETE", "api/quotas/users/boss").status_code == 200
        assert "boss" not in call(hub, "GET", "api/quotas").json()["overrides"]
        assert call(hub, "PUT", "api/quotas/users/nobody-here", json={"priority": 1}).status_code == 404
    finally:
        ledger.end(holder)
        ledger.dispose()


def test_stop_server(hub):
    hub.create_users(["runner"])
    r = hub.spawn("runner", {"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("runner")
    r = call(hub, "POST", "api/servers/runner/stop")
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while hub.user("runner").get("servers"):
        assert time.monotonic() < deadline, "server did not stop"
        time.sleep(0.3)
    assert call(hub, "POST", "api/servers/runner/nope/stop").status_code in (400, 404)
    assert call(hub, "POST", "api/servers/no-such-user/stop").status_code == 404


def _login(hub, user: str, password: str) -> requests.Session:
    s = requests.Session()
    page = s.get(hub.url + "/hub/login", timeout=10).text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    r = s.post(
        hub.url + "/hub/login", data={"username": user, "password": password, "_xsrf": xsrf}, timeout=10
    )
    assert r.ok, r.text[:300]
    return s


def test_browser_oauth_and_xsrf(hub):
    browser = _login(hub, "boss", ADMIN_PASSWORD)
    page = browser.get(hub.base + "roster", timeout=30)
    assert page.status_code == 200 and "Roster import" in page.text, (
        page.url,
        re.findall(r"<h1.*|<p.*|<form.*|<input.*", page.text),
    )
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    r = browser.post(hub.base + "roster", data={"roster": "gina,web-g"}, timeout=30, allow_redirects=False)
    assert r.status_code == 403
    assert hub.api("GET", "/users/gina").status_code == 404
    r = browser.post(hub.base + "roster", data={"roster": "gina,web-g\n-x,web-g", "_xsrf": xsrf}, timeout=30)
    assert r.status_code == 200 and "Applied (1)" in r.text and "Rejected (1)" in r.text, r.text[:500]
    assert hub.api("GET", "/groups/web-g").json()["users"] == ["gina"]
    # a signed-in non-admin sees 403 on the page
    password = (hub.data_dir / "shared-password").read_text().strip()
    assert _login(hub, "pleb", password).get(hub.base, timeout=30).status_code == 403


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=25), inner, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(
    ["max_gpu_units", "cpu_limit", "mem_limit", "period", "allowed_profiles", "priority"]
)
quota_like = st.dictionaries(fields, json_values, max_size=3)
PUT_POST = [
    ("PUT", "api/quotas/groups/quota-g"),
    ("PUT", "api/quotas/users/pleb"),
    ("POST", "api/roster"),
    ("POST", "api/servers/pleb/stop"),
]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(PUT_POST), body=json_values | quota_like)
def test_random_bodies_never_5xx(hub, route, body):
    method, path = route
    r = call(hub, method, path, data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (body, r.text[:300])


@pytest.mark.parametrize(
    "text, good, bad",
    [
        pytest.param("a,b\nA,b", 1, 1, id="case-insensitive-duplicate"),
        pytest.param("a" * 39 + ",g", 1, 0, id="39-chars"),
        pytest.param("a-b-c,org:team", 1, 0, id="team-group"),
        pytest.param("a-,g\n,g\na,b,c", 0, 3, id="bad-rows"),
    ],
)
def test_parse_roster(text, good, bad):
    rows, rejected = parse_roster(text)
    assert (len(rows), len(rejected)) == (good, bad)


def _service_token(hub: HubProcess) -> str:
    """The token the hub gave its gpuhub-admin service: JUPYTERHUB_API_TOKEN of that child process."""
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != hub.proc.pid or b"hub_services.admin" not in (entry / "cmdline").read_bytes():
                continue
            environ = dict(i.split("=", 1) for i in (entry / "environ").read_text().split("\0") if "=" in i)
        except (OSError, ValueError, IndexError):
            continue
        return environ["JUPYTERHUB_API_TOKEN"]
    raise AssertionError("no gpuhub-admin service process under this hub")


WRITES = [
    ("POST", "/users", {"usernames": ["mallet"]}),
    ("POST", "/users/mallet", None),
    ("PATCH", "/users/pleb", {"name": "pleb2"}),
    ("PATCH", "/users/pleb", {"auth_state": {"token": "x"}}),
    ("DELETE", "/users/pleb", None),
    ("POST", "/groups/role-g", None),
    ("PUT", "/groups/quota-g/properties", {"max_gpu_units": 99}),
    ("POST", "/groups/quota-g/users", {"users": ["pleb"]}),
    ("DELETE", "/users/pleb/server", None),
    ("POST", "/users/pleb/tokens", {}),
]


def test_service_token_only_reads(hub):
    """The role holds no write scope on users, groups, servers or tokens: every such change goes
    through an admin's own token.  (With instructor help on, it may share a server: its only
    other scopes are ``shares`` and ``access:servers``, tests/hub_services/test_admin_help.py.)"""
    token = _service_token(hub)
    hub.api("POST", "/groups/quota-g")

    def as_service(method, path, body=None):
        return requests.request(method, hub.url + "/hub/api" + path, json=body, timeout=10,
                                headers={"Authorization": f"token {token}"})

    scopes = set(as_service("GET", "/user").json()["scopes"])
    sharing = {"shares", "users:shares", "groups:shares", "access:servers"}  # 'shares' and what it holds
    assert not {s for s in scopes - sharing if s.startswith(("admin:", "users", "groups", "delete:", "tokens", "servers"))}
    assert {s for s in scopes if not s.startswith(("read:", "list:"))} == sharing, scopes
    for method, path, body in WRITES:
        assert as_service(method, path, body).status_code in (403, 404), (method, path)
    assert "pleb" in {u["name"] for u in as_service("GET", "/users").json()}  # it still reads
    assert "auth_state" not in as_service("GET", "/users/boss").json()
    assert hub.api("GET", "/users/mallet").status_code == 404 and hub.user("pleb")["name"] == "pleb"
