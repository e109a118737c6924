"""Instructor help on the GPU Hub page, against a real JupyterHub with real servers.

Instructors (members of the ``instructors`` group that jupyterhub_config.py's default names)
open an attendee's running server from the Help tab: JupyterHub shares that server with them,
the hub's log records it, the attendee sees it on the hub's pages, and closing it ends the
access.  Attendees cannot open each other's servers, and instructors cannot open admins' or
other instructors'.
"""

from __future__ import annotations

import re
import time

import pytest
import requests
from harness import HubProcess, signed_in

pytestmark = [pytest.mark.docker, pytest.mark.hub]

ADMIN_PASSWORD = "admin-" + "y" * 40
EXTRA = f"""
c.Authenticator.admin_users = {{"boss"}}
c.SharedPasswordAuthenticator.admin_password = {ADMIN_PASSWORD!r}
"""


@pytest.fixture(scope="module")
def hub(docker_client, tmp_path_factory):
    hub = HubProcess(tmp_path_factory.mktemp("help-hub"), {}, EXTRA)
    with hub.kept_for_tests(docker_client):
        hub.start()
        hub.base = hub.url + "/services/gpuhub-admin/"
        hub.create_users(["boss", "teach", "teach2", "ann", "bob"])
        # the group the default config names exists at start (JupyterHub makes a role's groups)
        assert hub.api("GET", "/groups/instructors").ok
        r = hub.api("POST", "/groups/instructors/users", json={"users": ["teach", "teach2"]})
        assert r.ok, r.text
        for user in ("ann", "bob", "teach2"):
            assert hub.spawn(user, {"profile": "cpu"}).status_code in (201, 202)
        for user in ("ann", "bob", "teach2"):
            hub.wait_ready(user)
        ann = hub.new_token("ann")
        r = requests.put(hub.url + "/user/ann/api/contents/notes.txt", timeout=30,
                         headers={"Authorization": f"token {ann}"},
                         json={"type": "file", "format": "text", "content": "ann's own notes"})
        assert r.status_code in (200, 201), r.text
        yield hub


def _xsrf(page: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)


def _shares(hub: HubProcess, owner: str) -> list[tuple[str, list[str]]]:
    """(shared with, scopes) of every share of ``owner``'s servers, as the hub admin reads them."""
    if not getattr(hub, "boss_token", None):
        hub.boss_token = hub.new_token("boss")
    r = requests.get(f"{hub.url}/hub/api/shares/{owner}", headers={"Authorization": f"token {hub.boss_token}"},
                     timeout=30)
    assert r.ok, r.text
    return [(s["user"]["name"], s["scopes"]) for s in r.json()["items"]]


def _help_page(session: requests.Session, hub: HubProcess) -> requests.Response:
    return session.get(hub.base + "help", timeout=30)


def _reads_ann(session: requests.Session, hub: HubProcess) -> int:
    """Open ann's JupyterLab as a browser would (through the hub's OAuth), then read her file.

    Someone else's server asks its visitor to authorize it first (JupyterHub's own consent page,
    as for any shared server): the helper presses Authorize."""
    r = session.get(hub.url + "/user/ann/lab", timeout=30)
    if "/hub/api/oauth2/authorize" in r.url and r.ok:
        fields = re.findall(r'<input type="hidden" name="(_xsrf|scopes)" value="([^"]*)"', r.text)
        assert fields and "access:servers!server=ann/" in r.text, r.text[-2000:]
        session.post(r.url, data=fields, timeout=30)
    r = session.get(hub.url + "/user/ann/api/contents/notes.txt", timeout=30)
    if r.ok:
        assert r.json()["content"] == "ann's own notes"
    return r.status_code


def test_instructor_opens_an_attendees_server_and_closes_it(hub):
    teach = signed_in(hub, "teach")
    assert _reads_ann(teach, hub) != 200  # an instructor has no access until they open it

    page = _help_page(teach, hub)
    assert page.status_code == 200, page.text[:500]
    rows = re.findall(r"<tr>\s*<td>([^<]+)</td><td>([^<]+)</td>", page.text)
    assert ("ann", "default") in rows and ("bob", "default") in rows
    assert ("teach2", "default") not in rows and not any(u == "teach" for u, _ in rows)
    assert ">Help</a>" in page.text and "Allocations &amp; usage" not in page.text  # the Help tab only
    assert teach.get(hub.base, timeout=30).status_code == 403  # the admin pages stay admins'

    r = teach.post(hub.base + "help/open/ann", data={"_xsrf": _xsrf(page.text)}, timeout=30,
                   allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/user/ann/", r.text[:300]
    assert _reads_ann(teach, hub) == 200

    assert "help started: teach opened ann's server (full access)" in hub.log_path.read_text()
    assert _shares(hub, "ann") == [("teach", ["access:servers!server=ann/"])]
    home = hub.home_page("ann")  # the attendee sees who may open her server
    assert re.search(r'class="gpuhub-shared">Help: <b>teach</b> can open your server', home), home[-3000:]
    assert "gpuhub-shared" not in hub.home_page("bob")

    page = _help_page(teach, hub)
    assert "open again" in page.text and 'id="help-open"' in page.text
    r = teach.post(hub.base + "help/close/ann", data={"_xsrf": _xsrf(page.text)}, timeout=30,
                   allow_redirects=False)
    assert r.status_code == 303, r.text[:300]
    assert _shares(hub, "ann") == []
    assert "help ended: teach closed ann's server" in hub.log_path.read_text()
    assert "gpuhub-shared" not in hub.home_page("ann")
    # the server re-asks the hub within 30 s (c.Spawner.args): the open session is shut out
    deadline = time.monotonic() + 60
    while (status := teach.get(hub.url + "/user/ann/api/contents/notes.txt", timeout=30).status_code) == 200:
        assert time.monotonic() < deadline, "the closed help still reads the server"
        time.sleep(2)
    assert status in (302, 403, 404), status


def test_an_attendee_cannot_open_another_attendees_server(hub):
    bob = signed_in(hub, "bob")
    assert _reads_ann(bob, hub) != 200
    assert bob.get(hub.base + "help", timeout=30).status_code == 403
    token = hub.new_token("bob")
    r = requests.post(hub.base + "api/help/ann", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 403
    assert _shares(hub, "ann") == []


@pytest.mark.parametrize("target, status, words", [
    ("boss", 403, "is an admin or an instructor"),   # an admin's server
    ("teach2", 403, "is an admin or an instructor"),  # another instructor's
    ("teach", 403, "is an admin or an instructor"),   # their own
    ("nobody-here", 404, "does not exist"),
])
def test_instructors_open_only_attendees_servers(hub, target, status, words):
    token = hub.new_token("teach")
    r = requests.post(hub.base + f"api/help/{target}", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == status and words in r.json()["error"], r.text
    if status == 403:
        assert _shares(hub, target) == []


def test_a_stopped_server_is_not_opened_and_the_api_reports_it(hub):
    hub.create_users(["cara"])
    token = hub.new_token("teach")
    r = requests.post(hub.base + "api/help/cara", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 409 and "is not running" in r.json()["error"], r.text
    r = requests.get(hub.base + "api/help", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert {(s["user"], s["server"]) for s in body["servers"]} >= {("ann", ""), ("bob", "")}
    assert body["group"] == "instructors" and body["access"] == "full"
