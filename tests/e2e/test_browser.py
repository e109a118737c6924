"""A person's path through the hub in a real browser (Debian's Chromium, headless).

GitHub is the only fake (tests/support/fakes/fake_github.py); the hub, proxy, spawner, engine and
JupyterLab are real.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fakes.fake_github import FakeGitHub
from harness import HubProcess, container_of, fake_gpus, fake_mig_gpu

pytestmark = [pytest.mark.docker, pytest.mark.hub]

@pytest.fixture
def github():
    with FakeGitHub() as gh:
        gh.add_user("ann", teams={"acme:gpu"})
        yield gh


def _hub(tmp_path: Path, github: FakeGitHub, admin_teams: set[str] | None = None) -> HubProcess:
    extra = github.hub_config({"acme:gpu", "acme:staff"}, admin_teams or set())
    inventory = [fake_mig_gpu("br", ["1g.10gb", "1g.10gb"]), *fake_gpus(1, "br")]
    return HubProcess(tmp_path / "hub", {"gpu_inventory": inventory}, extra=extra)


def test_sign_in_pick_a_profile_watch_progress_land_in_jupyterlab(browser, github, docker_client, tmp_path,
                                                                   artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    hub = _hub(tmp_path, github)
    github.signed_in = "ann"
    hub.start()
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(hub.url + "/hub/login")
        wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "Sign in with GitHub"))).click()

        # the options form: profiles with free counts, the shared-memory warning where it applies
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=profile]")))
        form = browser.find_element(By.CSS_SELECTOR, ".gpuhub-profiles").text
        assert "MIG 1g.10gb" in form and "2 of 2 free" in form and "CPU only" in form
        browser.save_screenshot(str(artifacts / "1-options.png"))
        browser.find_element(By.CSS_SELECTOR, "input[name=profile][value='mig-1g-10gb']").click()
        browser.find_element(By.CSS_SELECTOR, "form input[type=submit], form button[type=submit]").click()

        # progress: the real steps, streamed into the page's event log while the server starts
        seen = _progress_messages(browser, until="Assigned MIG 1g.10gb")
        assert any("Reserving a MIG 1g.10gb" in m for m in seen), seen
        browser.save_screenshot(str(artifacts / "2-progress.png"))

        WebDriverWait(browser, 180).until(ec.presence_of_element_located((By.ID, "jp-main-dock-panel")))
        assert "/user/ann/lab" in browser.current_url
        browser.save_screenshot(str(artifacts / "3-jupyterlab.png"))
        unit = container_of(docker_client, hub, "ann").labels["org.gpuhub.unit"]
        assert unit.startswith("MIG-br-")
    finally:
        hub.cleanup(docker_client)


def _progress_messages(browser, until: str, timeout: float = 120) -> list[str]:
    """Text of the spawn-pending page's progress log (hidden inside a <details>), polled."""
    import time

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = browser.execute_script(
            "const log = document.querySelector('#progress-log');"
            "return log ? log.textContent : document.body.textContent;"
        )
        if until in text or "/lab" in browser.current_url:
            break
        time.sleep(0.2)
    assert until in text, text
    return [line.strip() for line in text.splitlines() if line.strip()]


def _sign_in(browser, hub: HubProcess, github: FakeGitHub, login: str):
    """``login`` signs in with (the fake) GitHub and lands on the spawn form; the browser's wait."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    github.signed_in = login
    wait = WebDriverWait(browser, 60)
    browser.get(hub.url + "/hub/login")
    wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "Sign in with GitHub"))).click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=profile]")))
    return wait


def test_admin_changes_a_group_quota_on_the_gpu_hub_page(browser, github, docker_client, tmp_path, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    github.add_user("ada", teams={"acme:staff"})
    hub = _hub(tmp_path, github, admin_teams={f"acme:staff={github.id_of('acme:staff')}"})
    hub.start()
    try:
        assert hub.api("POST", "/groups/students").status_code == 201
        wait = _sign_in(browser, hub, github, "ada")

        # the Services menu leads admins to the GPU Hub page
        browser.get(hub.url + "/hub/home")
        assert "gpuhub-admin" in browser.page_source
        browser.get(hub.url + "/services/gpuhub-admin/quotas")
        form = wait.until(
            ec.presence_of_element_located((By.XPATH, "//h3[text()='students']/following-sibling::form[1]"))
        )
        field = form.find_element(By.NAME, "max_gpu_units")
        field.clear()
        field.send_keys("2")
        # and a weekly reservation for the course's lab session, typed as the placeholder shows
        form.find_element(By.NAME, "gpu_reservations").send_keys('[{"pool": "gpu", "units": 2, "weekly": "tue 9:00-12:00"}]')
        save = form.find_element(By.TAG_NAME, "button")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", save)  # the page is long
        browser.save_screenshot(str(artifacts / "4-gpu-hub-quotas.png"))
        form.screenshot(str(artifacts / "4-gpu-hub-quotas-students-form.png"))
        save.click()
        stored = [{"pool": "gpu", "units": 2, "tz": "UTC", "weekly": "Tue 09:00-12:00"}]
        wait.until(lambda d: hub.api("GET", "/groups/students").json()["properties"] ==
                   {"max_gpu_units": 2, "gpu_reservations": stored})
        # the page it comes back to shows what was saved
        form = wait.until(
            ec.presence_of_element_located((By.XPATH, "//h3[text()='students']/following-sibling::form[1]"))
        )
        assert json.loads(form.find_element(By.NAME, "gpu_reservations").get_attribute("value")) == stored
    finally:
        hub.cleanup(docker_client)


def test_admin_sees_gpu_charts_drawn_from_the_ledger(browser, github, docker_client, tmp_path, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    github.add_user("ada", teams={"acme:staff"})
    hub = _hub(tmp_path, github, admin_teams={f"acme:staff={github.id_of('acme:staff')}"})
    hub.start()
    try:
        hub.create_users(["ann"])
        assert hub.api("POST", "/groups/students").status_code == 201
        assert hub.api("POST", "/groups/students/users", json={"users": ["ann"]}).ok
        assert hub.spawn("ann", {"profile": "gpu"}).status_code in (201, 202)
        hub.wait_ready("ann")  # ann holds the whole GPU: the ledger has her interval
        hub.create_users(["ben"])
        with ThreadPoolExecutor(1) as pool:  # ben waits in line for it until ann stops
            pool.submit(hub.spawn, "ben", {"profile": "gpu"}, 30)
            hub.wait_in_line("ben")
            hub.stop_server("ann")
            hub.wait_ready("ben")  # his finished wait is recorded: the waiting chart has it
        # the students reserve the GPU for today (set now: kept for them, it would not have gone to ben)
        day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        window = {"pool": "gpu", "units": 1, "start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()}
        assert hub.api("PUT", "/groups/students/properties", json={"gpu_reservations": [window]}).ok

        wait = _sign_in(browser, hub, github, "ada")
        browser.get(hub.url + "/services/gpuhub-admin/charts")
        held = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#chart-held svg")))
        lines = held.find_elements(By.TAG_NAME, "polyline")
        assert [line.find_element(By.TAG_NAME, "title").get_attribute("textContent") for line in lines] == [
            "gpu: at most 1 held"]
        bars = browser.find_elements(By.CSS_SELECTOR, "#chart-groups svg rect title")
        # ann was added by an admin, so she is on the roster too: her GPU time counts in both groups
        assert sorted(b.get_attribute("textContent").split(":")[0] for b in bars) == ["roster", "students"]
        waiting = browser.find_elements(By.CSS_SELECTOR, "#chart-waiting svg polyline title")
        assert [w.get_attribute("textContent") for w in waiting] == ["gpu: at most 1 waiting"]
        told = browser.find_element(By.ID, "wait-estimates").text
        assert "Waits ended: 1" in told and "Told a range: 0" in told and "no estimate yet: 1" in told, told
        reservation = browser.find_elements(By.CSS_SELECTOR, ".gpuhub-chart-reservation svg polyline title")
        assert [t.get_attribute("textContent") for t in reservation] == [
            "reserved: at most 1 units", "held by members: at most 1 units"]  # ann, a student, held it
        assert not browser.find_elements(By.CSS_SELECTOR, "script[src*='//']")  # nothing fetched from elsewhere
        browser.save_screenshot(str(artifacts / "5-gpu-hub-charts.png"))
        browser.set_window_size(1280, 2000)  # the whole page: waiting, estimates and reservation use
        browser.save_screenshot(str(artifacts / "6-gpu-hub-charts-whole-page.png"))
    finally:
        hub.cleanup(docker_client)


def test_an_instructor_opens_an_attendees_server_and_the_attendee_sees_it(browser, github, docker_client,
                                                                          tmp_path, artifacts):
    """The Help tab as a teaching assistant uses it: open ann's running server, press JupyterHub's
    Authorize, land in ann's JupyterLab; then ann, signed in, reads who can open her server."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    github.add_user("tina", teams={"acme:gpu"})
    hub = _hub(tmp_path, github)
    hub.start()
    try:
        hub.create_users(["ann", "tina"])
        assert hub.api("POST", "/groups/instructors/users", json={"users": ["tina"]}).ok  # e.g. by the roster
        assert hub.spawn("ann", {"profile": "cpu"}).status_code in (201, 202)
        hub.wait_ready("ann")

        wait = _sign_in(browser, hub, github, "tina")
        browser.get(hub.url + "/services/gpuhub-admin/help")
        row = wait.until(ec.presence_of_element_located((By.XPATH, "//table[@id='help-servers']//tr[td[1]='ann']")))
        tabs = [a.text for a in browser.find_elements(By.CSS_SELECTOR, ".gpuhub-admin .nav-tabs .nav-link")]
        assert tabs == ["Help"], tabs  # an instructor sees only this tab
        browser.save_screenshot(str(artifacts / "1-help-tab.png"))
        row.find_element(By.XPATH, ".//button[normalize-space()='open']").click()

        # JupyterHub asks before letting anyone into another user's server
        wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Authorize']")))
        assert "ann" in browser.page_source
        browser.save_screenshot(str(artifacts / "2-authorize.png"))
        browser.find_element(By.XPATH, "//button[normalize-space()='Authorize']").click()
        WebDriverWait(browser, 120).until(ec.presence_of_element_located((By.ID, "jp-main-dock-panel")))
        assert "/user/ann/" in browser.current_url
        browser.save_screenshot(str(artifacts / "3-in-anns-jupyterlab.png"))

        browser.get(hub.url + "/hub/logout")  # tina signs out
        github.signed_in = "ann"  # ann signs in: her server runs, so she lands in it, not on the form
        browser.get(hub.url + "/hub/login")
        wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "Sign in with GitHub"))).click()
        wait.until(lambda b: "/hub/login" not in b.current_url and "oauth" not in b.current_url)
        browser.get(hub.url + "/hub/home")
        shared = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".gpuhub-shared")))
        assert shared.text.startswith("Help: tina can open your server and work in it as you can"), shared.text
        browser.save_screenshot(str(artifacts / "4-ann-sees-who-can-open-her-server.png"))
    finally:
        hub.cleanup(docker_client)
