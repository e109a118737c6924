"""The tutorial-sync service: as a real hub-managed service, and its sync loop in-process.

Real Git throughout: bare repositories served over HTTP by git's own http-backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
import requests
from gitserver import WorkClone, make_bare, serve_http
from harness import container_of, exec_as_user, fake_gpus, free_port
from promserver import scrape_with_committed_job

from hub_services.tutorial_sync.app import Syncer, verify_signature
from hub_services.tutorial_sync.gitsource import GitSource
from hub_services.tutorial_sync.publish import current_version

REPO = Path(__file__).resolve().parents[2]
TOKEN = "tok-5f1e-not-for-logs"
SECRET = "webhook-s3cret"
PROMETHEUS_TOKEN = "prometheus-token-for-tests-0123456789abcdef"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "secret, header, ok",
    [
        pytest.param(SECRET, sign(b"{}"), True, id="valid"),
        pytest.param(SECRET, sign(b"{}", "other"), False, id="wrong-secret"),
        pytest.param(SECRET, None, False, id="unsigned"),
        pytest.param(SECRET, "sha1=" + "0" * 40, False, id="sha1-only"),
        pytest.param("", sign(b"{}", ""), False, id="no-secret-configured"),
    ],
)
def test_verify_signature(secret, header, ok):
    assert verify_signature(secret.encode(), b"{}", header) is ok


@pytest.fixture
def remote(tmp_path):
    bare = make_bare(tmp_path / "repos" / "tutorials.git")
    clone = WorkClone(bare, tmp_path / "author")
    with serve_http(tmp_path / "repos", token=TOKEN) as base:
        yield f"{base}/tutorials.git", clone


async def test_poll_publishes_a_push_within_an_interval(remote, tmp_path):
    url, clone = remote
    clone.write("intro.py", "print('v1')\n")
    first = clone.commit_and_push("v1")
    store = tmp_path / "store"
    syncer = Syncer(GitSource(url, "main", tmp_path / "cache", token=TOKEN), store, 10**6, 3, url)
    task = asyncio.create_task(syncer.loop(0.3))
    try:
        await _until(lambda: current_version(store) == first)
        clone.write("intro.py", "print('v2')\n")
        second = clone.commit_and_push("v2")
        await _until(lambda: current_version(store) == second)
        assert (store / "current" / "intro.py").read_text() == "print('v2')\n"
        assert syncer.status.trigger == "poll" and syncer.status.last_error is None
    finally:
        task.cancel()


async def test_unreachable_remote_is_reported_not_fatal(tmp_path):
    store = tmp_path / "store"
    url = f"http://127.0.0.1:{free_port()}/nothing.git"
    syncer = Syncer(GitSource(url, "main", tmp_path / "cache", timeout=10), store, 10**6, 3, url)
    status = await syncer.run_once("test")
    assert status.last_error and status.commit is None
    assert current_version(store) is None


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def _until(check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def _wait_status(base: str, predicate, token: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(base + "status.json", headers=_auth(token), timeout=5)
            if r.ok:
                last = r.json()
                if predicate(last):
                    return last
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"status never matched; last: {last}")


@pytest.mark.docker
@pytest.mark.hub
def test_hub_managed_sync_with_webhook(docker_client, hub_factory, remote, tmp_path):
    url, clone = remote
    clone.write("intro.py", "print('v1')\n")
    first = clone.commit_and_push("v1")
    store = tmp_path / "store"
    prometheus_token_file = tmp_path / "prometheus-token"
    prometheus_token_file.write_text(PROMETHEUS_TOKEN)
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "ts"), "tutorials_source": str(store)}, start=False)
    hub.start(
        env={
            "GPUHUB_PROMETHEUS_TOKEN_FILE": str(prometheus_token_file),
            "GPUHUB_TUTORIALS_REPO": url,
            "GPUHUB_TUTORIALS_STORE": str(store),
            "GPUHUB_TUTORIALS_TOKEN": TOKEN,
            "GPUHUB_WEBHOOK_SECRET": SECRET,
            "GPUHUB_TUTORIALS_POLL_INTERVAL": "3600",  # so only the webhook can explain a sync
            "GPUHUB_TUTORIAL_SYNC_PORT": str(free_port()),
        }
    )
    base = hub.url + "/services/tutorial-sync/"
    status = _wait_status(base, lambda s: s["commit"] == first, hub.token)
    assert status["last_error"] is None and status["files"] == 1

    hub.create_users(["vera"])
    hub.spawn("vera", {"profile": "gpu"})
    hub.wait_ready("vera")
    vera = container_of(docker_client, hub, "vera")
    assert exec_as_user(vera, "cat ~/tutorials/intro.py") == (0, "print('v1')\n")

    clone.write("intro.py", "print('v2')\n")
    second = clone.commit_and_push("v2")
    push = json.dumps({"ref": "refs/heads/main", "after": second}).encode()
    # forged and unsigned calls change nothing
    before = requests.get(base + "status.json", headers=_auth(hub.token), timeout=5).json()
    for headers in ({"X-Hub-Signature-256": sign(push, "guess")}, {}):
        r = requests.post(base + "webhook", data=push, headers={"X-GitHub-Event": "push", **headers}, timeout=5)
        assert r.status_code == 401
    time.sleep(1)
    assert requests.get(base + "status.json", headers=_auth(hub.token), timeout=5).json() == before

    r = requests.post(
        base + "webhook",
        data=push,
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(push)},
        timeout=5,
    )
    assert r.status_code == 202, r.text
    _wait_status(base, lambda s: s["commit"] == second and s["trigger"] == "webhook", hub.token)
    # the running server sees the new commit without a restart
    assert exec_as_user(vera, "cat ~/tutorials/intro.py") == (0, "print('v2')\n")

    page = requests.get(base, headers=_auth(hub.token), timeout=5).text
    metrics = requests.get(base + "metrics", headers=_auth(PROMETHEUS_TOKEN), timeout=5).text
    assert second in page
    assert 'gpuhub_tutorial_sync_runs_total{result="published"} 2.0' in metrics
    for text in (page, metrics, json.dumps(before), hub.log_path.read_text(errors="replace")):
        assert TOKEN not in text and SECRET not in text

    # vera edits her copy; upstream changes the same file; her edit survives her next start
    assert exec_as_user(vera, "echo \"print('mine')\" > ~/my-tutorials/intro.py")[0] == 0
    clone.write("intro.py", "print('v3')\n")
    third = clone.commit_and_push("v3")
    push = json.dumps({"ref": "refs/heads/main", "after": third}).encode()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(push)}
    assert requests.post(base + "webhook", data=push, headers=headers, timeout=5).status_code == 202
    _wait_status(base, lambda s: s["commit"] == third, hub.token)
    # she also keeps her own notes in a file named like the copy's report
    assert exec_as_user(vera, "echo 'my notes' > ~/my-tutorials/TUTORIAL-UPDATES.txt")[0] == 0
    hub.stop_server("vera")
    hub.spawn("vera", {"profile": "gpu"})
    hub.wait_ready("vera")
    vera = container_of(docker_client, hub, "vera")
    assert exec_as_user(vera, "cat ~/my-tutorials/intro.py") == (0, "print('mine')\n")
    assert exec_as_user(vera, "cat ~/my-tutorials/intro.upstream.py") == (0, "print('v3')\n")
    assert exec_as_user(vera, "cat ~/my-tutorials/TUTORIAL-UPDATES.txt") == (0, "my notes\n")
    code, note = exec_as_user(vera, "cat ~/my-tutorials/TUTORIAL-UPDATES-2.txt")
    assert code == 0 and "conflict" in note and "intro.upstream.py" in note

    # the service's own token holds no scopes: it needs no hub API access
    service = hub.api("GET", "/services/tutorial-sync").json()
    assert service["roles"] == [], service


async def test_webhook_arriving_during_a_sync_is_not_lost(tmp_path):
    syncer = Syncer(GitSource("http://127.0.0.1:9/x.git", "main", tmp_path / "cache"), tmp_path / "store", 1, 1, "x")
    calls = []

    async def slow_sync(trigger):  # stands in for a long fetch; the loop logic is what is tested
        calls.append(trigger)
        if len(calls) == 1:
            syncer.trigger()  # a push webhook arrives mid-sync
        await asyncio.sleep(0.05)

    syncer.run_once = slow_sync
    task = asyncio.create_task(syncer.loop(3600))
    try:
        await _until(lambda: len(calls) >= 2, timeout=5)
    finally:
        task.cancel()
    assert calls[:2] == ["start", "webhook"]


@pytest.mark.docker
@pytest.mark.hub
def test_status_and_metrics_need_the_hub_and_the_webhook_does_not(docker_client, hub_factory, remote, tmp_path):
    """Anonymous callers and plain users are refused; admins, allowed services and the
    read:metrics token get in; GitHub's signed webhook needs no sign-in."""
    url, clone = remote
    clone.write("intro.py", "print('v1')\n")
    first = clone.commit_and_push("v1")
    token_file = tmp_path / "prometheus-token"
    token_file.write_text(PROMETHEUS_TOKEN)
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "ta")}, extra='c.Authenticator.admin_users = {"prof"}\n', start=False)
    hub.start(
        env={
            "GPUHUB_TUTORIALS_REPO": url,
            "GPUHUB_TUTORIALS_STORE": str(tmp_path / "store"),
            "GPUHUB_TUTORIALS_TOKEN": TOKEN,
            "GPUHUB_WEBHOOK_SECRET": SECRET,
            "GPUHUB_TUTORIALS_POLL_INTERVAL": "3600",
            "GPUHUB_PROMETHEUS_TOKEN_FILE": str(token_file),
            "GPUHUB_TUTORIALS_MAX_FILES": "1",
        }
    )
    base = hub.url + "/services/tutorial-sync/"
    _wait_status(base, lambda s: s["commit"] == first, hub.token)  # the test service: access:services
    hub.create_users(["ann"])
    assert hub.user("prof")["admin"] is True
    tokens = {}
    for name, scopes in (("ann", None), ("prof", None), ("prof", ["read:metrics"])):
        r = hub.api("POST", f"/users/{name}/tokens", json={"scopes": scopes} if scopes else {})
        assert r.status_code == 201, r.text
        tokens[(name, tuple(scopes or ()))] = r.json()["token"]
    ann, prof, prof_metrics = tokens[("ann", ())], tokens[("prof", ())], tokens[("prof", ("read:metrics",))]

    def get(path: str, token: str | None = None) -> requests.Response:
        headers = _auth(token) if token else {}
        return requests.get(base + path, headers=headers, timeout=10, allow_redirects=False)

    # anonymous: refused everywhere but the webhook; the page sends browsers to sign in
    assert get("status.json").status_code == 403
    assert get("metrics").status_code == 403
    page = get("")
    assert page.status_code == 302 and "/hub/api/oauth2/authorize" in page.headers["Location"]
    assert first not in page.text
    # a plain attendee: no access to the service, no read:metrics
    for path in ("", "status.json", "metrics"):
        r = get(path, ann)
        assert r.status_code == 403, (path, r.status_code)
        assert first not in r.text and url not in r.text
    # an admin gets the status; metrics need read:metrics, which this token of theirs has
    assert get("status.json", prof).json()["commit"] == first
    assert first in get("", prof).text
    assert get("status.json", prof_metrics).status_code == 403  # read:metrics alone: metrics only
    for token in (prof_metrics, PROMETHEUS_TOKEN):
        r = get("metrics", token)
        assert r.status_code == 200 and "gpuhub_tutorial_sync_runs_total" in r.text
    assert get("metrics", "not-a-token").status_code == 403
    # the webhook stays reachable without a hub sign-in, and still checks its signature;
    # this push has 2 files, over GPUHUB_TUTORIALS_MAX_FILES=1: refused whole, and the page says so
    clone.write("second.py", "print('two')\n")
    too_big = clone.commit_and_push("two files")
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    hook = {"X-GitHub-Event": "push"}
    assert requests.post(base + "webhook", data=body, headers=hook, timeout=10).status_code == 401
    signed = {**hook, "X-Hub-Signature-256": sign(body)}
    assert requests.post(base + "webhook", data=body, headers=signed, timeout=10).status_code == 202
    status = _wait_status(base, lambda s: s["last_error"] and s["trigger"] == "webhook", hub.token)
    assert status["commit"] == first
    assert f"Commit {too_big[:12]} was not published: it has 2 files, over the limit of 1" in status["last_error"]
    assert f"Commit {too_big[:12]} was not published" in get("", prof).text

    # the committed scrape job, with Prometheus's token file, scrapes it through the proxy
    scrape_with_committed_job(
        tmp_path / "prom",
        "gpuhub-tutorial-sync",
        token_file,
        hub.port,
        'gpuhub_tutorial_sync_runs_total{job="gpuhub-tutorial-sync",result="error"} == 1',
    )


@pytest.mark.docker
@pytest.mark.hub
@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("GPUHUB_TUTORIALS_MAX_FILES", "lots", "GPUHUB_TUTORIALS_MAX_FILES='lots' is not a number"),
        ("GPUHUB_TUTORIALS_MAX_TOTAL_MB", "0", "GPUHUB_TUTORIALS_MAX_TOTAL_MB='0' is out of range"),
    ],
    ids=["files-word", "total-zero"],
)
def test_bad_commit_limits_stop_the_hub_at_start(hub_factory, tmp_path, setting, value, message):
    hub = hub_factory({"gpu_inventory": fake_gpus(1, "tl")}, start=False)
    with pytest.raises(RuntimeError, match="hub exited") as excinfo:
        hub.start(env={"GPUHUB_TUTORIALS_REPO": str(tmp_path / "none.git"), setting: value})
    assert message in str(excinfo.value)
    assert "Traceback" not in str(excinfo.value)
