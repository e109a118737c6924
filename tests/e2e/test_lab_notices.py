"""A cull warning inside JupyterLab, in a real browser: the notification, "Keep my server", and the
warning lifted.

Real hub, proxy, culler (a hub-managed service, passes triggered by the test), single-user
container with gpuhub's JupyterLab extension (built from the npm registry into the image) and
Chromium; GitHub is the only fake.  An open, visible JupyterLab is activity in itself, so the
attendee is away (another page) when the server goes idle and the culler warns, as happens when
someone leaves their tab; the warning is waiting in JupyterLab when they come back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cullerpass import decision, pass_until
from fakes.fake_github import FakeGitHub
from harness import HubProcess, container_of, exec_as_user, fake_gpus

pytestmark = [pytest.mark.docker, pytest.mark.hub]

IDLE = 40  # seconds the "cpu" profile may be idle: warned after IDLE - WARN seconds
WARN = 30  # seconds between the warning and the cull (less than IDLE: a kept server is not warned again at once)


@pytest.fixture
def github():
    with FakeGitHub() as gh:
        gh.add_user("ann", teams={"acme:gpu"})
        yield gh


def _hub(tmp_path: Path, github: FakeGitHub) -> HubProcess:
    extra = github.hub_config({"acme:gpu"}) + "c.JupyterHub.last_activity_interval = 2\n"
    hub = HubProcess(tmp_path / "hub", {"gpu_inventory": fake_gpus(1, "ln")}, extra=extra)
    hub.culler_config = tmp_path / "culler.json"
    hub.culler_config.write_text(json.dumps({"CullerApp": {
        "every": 0, "profile_idle_timeouts": {"cpu": IDLE}, "idle_cpu_timeout": 600, "warn_seconds": WARN,
    }}))
    hub.culler = hub.url + "/services/gpuhub-culler/"
    return hub


def _toast(browser, text: str, timeout: float = 60):
    """The JupyterLab notification (toast) whose text has ``text``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    xpath = f"//*[contains(@class, 'Toastify__toast') and contains(normalize-space(.), {text!r})]"
    try:
        return WebDriverWait(browser, timeout).until(lambda b: b.find_element(By.XPATH, xpath))
    except TimeoutException:
        shown = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".Toastify__toast")]
        console = [entry.get("message") for entry in browser.get_log("browser")]
        raise AssertionError(f"no notification with {text!r} in {timeout}s; shown: {shown}; console: {console}") from None


def read_as_server(server, path: str) -> tuple[int, str]:
    """GET the hub's API ``path`` from inside ``server`` with the server's own token."""
    return exec_as_user(server, "python -c \"import os, urllib.request as u; "
                        f"r = u.Request(os.environ['JUPYTERHUB_API_URL'] + '{path}', "
                        "headers={'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']}); "
                        "print(u.urlopen(r).read().decode())\"")


def _into_cpu_lab(browser, hub: HubProcess) -> None:
    """Sign in through the fake GitHub, start the CPU profile, land in JupyterLab."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(hub.url + "/hub/login")
    wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "Sign in with GitHub"))).click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=profile][value='cpu']"))).click()
    browser.find_element(By.CSS_SELECTOR, "form input[type=submit], form button[type=submit]").click()
    WebDriverWait(browser, 180).until(ec.presence_of_element_located((By.ID, "jp-main-dock-panel")))


def test_a_cull_warning_appears_in_jupyterlab_and_keep_my_server_lifts_it(browser, github, docker_client,
                                                                         tmp_path, artifacts):
    from selenium.webdriver.common.by import By

    hub = _hub(tmp_path, github)
    github.signed_in = "ann"
    hub.start(env={"GPUHUB_CULLER": "on", "GPUHUB_CULLER_CONFIG": str(hub.culler_config)})
    try:
        _into_cpu_lab(browser, hub)

        # ann walks away; her server goes idle and the culler warns (the file and the card)
        browser.get("about:blank")
        assert pass_until(hub, "ann", "warn", timeout=90) == ("warn", "idle")
        server = container_of(docker_client, hub, "ann")
        code, text = exec_as_user(server, "cat /home/jovyan/CULL-WARNING.txt")
        assert code == 0 and "about to be stopped" in text  # the fallback stays
        # named servers are off: the server's token reads ann's name and activity, not her servers
        code, body = read_as_server(server, "/users/ann")
        assert code == 0 and json.loads(body)["name"] == "ann" and "servers" not in json.loads(body), body

        # she comes back: the warning waits in JupyterLab, with the button
        browser.get(hub.url + "/user/ann/lab")
        toast = _toast(browser, "Still working?")
        assert "GPU Hub: your server is idle and stops at" in toast.text and "left" in toast.text, toast.text
        browser.save_screenshot(str(artifacts / "1-warning-in-jupyterlab.png"))
        pressed = time.time()
        toast.find_element(By.XPATH, ".//button[normalize-space()='Keep my server']").click()

        # the button acted: the server's own token posted its activity to the hub
        _toast(browser, "GPU Hub: kept.", timeout=30)
        browser.save_screenshot(str(artifacts / "2-kept.png"))
        logs = server.logs(since=int(pressed) - 1).decode(errors="replace")
        assert "gpuhub: keep-alive posted to the hub" in logs, logs[-2000:]

        # the culler's next pass lifts the warning; JupyterLab says so at its next look
        assert decision(hub, "ann") == ("cancel", "activity")
        _toast(browser, "the stop warning is lifted", timeout=40)
        browser.save_screenshot(str(artifacts / "3-warning-lifted.png"))
        assert exec_as_user(server, "test -e /home/jovyan/CULL-WARNING.txt")[0] != 0
        assert hub.api("GET", "/users/ann").json()["servers"][""]["ready"] is True
    finally:
        hub.cleanup(docker_client)


def test_your_turn_appears_in_jupyterlab_when_a_gpu_server_waiting_in_line_is_ready(browser, github, docker_client,
                                                                                     tmp_path, artifacts):
    """Named servers on (``hub.named_servers: true`` in gpuhub.yaml, as the README says): ann works
    in her CPU server's JupyterLab while her GPU server "train" waits in line behind bob's; bob
    stops, her GPU server starts, and her JupyterLab says it is her turn, with a link to it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    github.add_user("bob", teams={"acme:gpu"})
    hub = _hub(tmp_path, github)
    config = tmp_path / "gpuhub.yaml"
    config.write_text("hub:\n  named_servers: true\n")
    github.signed_in = "ann"
    hub.start(env={"GPUHUB_CONFIG": str(config)})
    try:
        _into_cpu_lab(browser, hub)

        # bob holds the one GPU; ann's named GPU server waits in line for it
        hub.create_users(["bob"])
        assert hub.spawn("bob", {"profile": "gpu"}).status_code in (201, 202)
        hub.wait_ready("bob")
        r = hub.api("POST", "/users/ann/servers/train", json={"profile": "gpu"}, timeout=60)
        assert r.status_code == 202, r.text
        assert hub.api("GET", "/users/ann").json()["servers"]["train"]["pending"] == "spawn"
        time.sleep(12)  # her JupyterLab sees it waiting (it looks every 10 s while visible)
        assert not browser.find_elements(By.XPATH, "//*[contains(@class,'Toastify__toast') and contains(., 'your turn')]")

        hub.stop_server("bob")
        deadline = time.monotonic() + 120
        while not hub.api("GET", "/users/ann").json()["servers"]["train"]["ready"]:
            assert time.monotonic() < deadline, hub.log_tail()
            time.sleep(0.5)
        toast = _toast(browser, "your turn", timeout=40)
        assert "Your server \u201ctrain\u201d is ready" in toast.text, toast.text
        time.sleep(1)  # the toast slides in: a still picture of it
        browser.save_screenshot(str(artifacts / "4-your-turn.png"))
        tabs = set(browser.window_handles)
        toast.find_element(By.XPATH, ".//button[normalize-space()='Open it']").click()
        WebDriverWait(browser, 30).until(lambda b: len(set(b.window_handles) - tabs) == 1)
        browser.switch_to.window((set(browser.window_handles) - tabs).pop())
        WebDriverWait(browser, 60).until(lambda b: "/user/ann/train/" in b.current_url)

        # the scope that made it possible is ann's own servers' read, nothing more
        (server,) = [c for c in hub.containers(docker_client)
                     if c.labels.get("org.gpuhub.user") == "ann" and not c.labels.get("org.gpuhub.server")]
        code, body = read_as_server(server, "/users/ann")
        assert code == 0 and json.loads(body)["servers"]["train"]["ready"] is True, body
        code, out = read_as_server(server, "/users/bob")  # JupyterHub hides whom a token may not read: 404
        assert code != 0 and "HTTP Error 404" in out, out
    finally:
        hub.cleanup(docker_client)
