"""The embedded default's sign-in, started the way the README says: `jupyterhub_config.py` with
`GPUHUB_ADMIN_USERS=prof` in the environment and no extra config (no test service, no test
password). Real hub, proxy, admin service and Debian's Chromium; nothing is faked.
"""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest
import requests
from harness import HubProcess

pytestmark = [pytest.mark.docker, pytest.mark.hub]


def documented_hub(workdir: Path, data: dict[str, str] | None = None) -> HubProcess:
    """A hub on free ports with only what deploy/gpuhub-up would see: GPUHUB_* settings from the README."""
    hub = HubProcess(workdir)
    del hub.env["GPUHUB_EXTRA_CONFIG"]  # nothing configures around jupyterhub_config.py
    shutil.rmtree(hub.data_dir, ignore_errors=True)  # a fresh data directory: the first start
    hub.data_dir.mkdir(parents=True)
    for name, text in (data or {}).items():
        (hub.data_dir / name).write_text(text)
    return hub


def new_person(driver) -> None:
    """Every cookie goes, the admin service's (path /services/...) too: another person at the keyboard."""
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})


def sign_in(hub: HubProcess, name: str, password: str) -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    page = s.get(hub.url + "/hub/login", timeout=10).text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    r = s.post(hub.url + "/hub/login", data={"username": name, "password": password, "_xsrf": xsrf},
               allow_redirects=False, timeout=10)
    return s, r


@pytest.fixture
def hub(docker_client, tmp_path):
    hub = documented_hub(tmp_path / "hub")
    yield hub
    hub.cleanup(docker_client)


def test_admin_signs_in_with_the_generated_password_nobody_else_can(hub, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    hub.start(env={"GPUHUB_ADMIN_USERS": "prof"})
    path = hub.data_dir / "admin-credentials" / "prof"
    password = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(password) >= 32
    log = hub.log_path.read_text()
    assert str(path) in log and password not in log  # where it is, never the secret

    wait = WebDriverWait(browser, 60)

    def submit(url: str, fields: dict[str, str], button: str) -> str:
        browser.get(hub.url + url)
        for field_id, value in fields.items():
            wait.until(ec.presence_of_element_located((By.ID, field_id))).send_keys(value)
        page = browser.find_element(By.TAG_NAME, "html")
        browser.find_element(By.ID, button).click()
        wait.until(ec.staleness_of(page))  # the answer replaced the form
        wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        return browser.find_element(By.TAG_NAME, "body").text

    # another person: cannot take the admin's name, nor sign in as the admin
    attendee = "a-long-attendee-password"
    for name in ("prof", "Prof"):
        page = submit("/hub/signup", {"username_input": name, "password_input": attendee,
                                      "password_confirmation_input": attendee}, "signup_submit")
        assert "already in use" in page, page
    page = submit("/hub/login", {"username_input": "prof", "password_input": attendee}, "login_submit")
    assert "Invalid username or password" in page and "/hub/login" in browser.current_url
    # their own sign-up waits for an admin, and grants nothing by itself
    page = submit("/hub/signup", {"username_input": "mallory", "password_input": attendee,
                                  "password_confirmation_input": attendee}, "signup_submit")
    assert "sent to the admin" in page, page
    page = submit("/hub/login", {"username_input": "mallory", "password_input": attendee}, "login_submit")
    assert "not been approved by an admin yet" in page, page
    browser.save_screenshot(str(tmp_path / "1-not-yet-approved.png"))

    # the admin, with the password from the file
    new_person(browser)
    submit("/hub/login", {"username_input": "prof", "password_input": password}, "login_submit")
    assert "/hub/login" not in browser.current_url, browser.current_url
    browser.get(hub.url + "/services/gpuhub-admin/")
    wait.until(lambda d: "GPU Hub" in d.find_element(By.TAG_NAME, "body").text)
    assert "/services/gpuhub-admin/" in browser.current_url
    browser.save_screenshot(str(tmp_path / "2-gpu-hub-page.png"))
    browser.get(hub.url + "/hub/change-password")  # NativeAuthenticator's own page renders on JupyterHub 6
    assert browser.find_elements(By.NAME, "new_password") and "prof" in browser.page_source

    # approves mallory from the Authorize Users page; the same link opened from elsewhere is refused
    browser.get(hub.url + "/hub/authorize/mallory")
    assert "Authorize Users page" in browser.page_source, browser.page_source[:500]
    browser.get(hub.url + "/hub/authorize")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "a[href$='discard/mallory']")))  # not approved
    browser.find_element(By.CSS_SELECTOR, "a[href$='authorize/mallory']").click()
    wait.until(lambda d: d.current_url.endswith("authorize#mallory"))
    assert not browser.find_elements(By.CSS_SELECTOR, "a[href$='discard/mallory']")  # approved now
    browser.save_screenshot(str(tmp_path / "3-approved.png"))

    # mallory now signs in, as mallory only, and is no admin
    new_person(browser)
    submit("/hub/login", {"username_input": "mallory", "password_input": attendee}, "login_submit")
    assert "/hub/login" not in browser.current_url, browser.page_source[:500]
    browser.get(hub.url + "/services/gpuhub-admin/")
    body = wait.until(lambda d: "403" in (t := d.find_element(By.TAG_NAME, "body").text) and t)
    assert "permission to access JupyterHub service gpuhub-admin" in body and "Usage and budget" not in body
    browser.get(hub.url + "/hub/api/user")
    assert '"name": "mallory"' in browser.page_source and '"admin": false' in browser.page_source


def test_data_dir_with_the_old_short_admin_password_starts(docker_client, tmp_path):
    # what deploy/gpuhub-up left behind before: a 16-character admin-password and a shared password
    hub = documented_hub(tmp_path / "hub", {"admin-password": "x" * 16 + "\n", "shared-password": "y" * 16 + "\n"})
    try:
        hub.start(env={"GPUHUB_ADMIN_USERS": "prof"})
        log = hub.log_path.read_text()
        assert "must be at least 32 characters" not in log
        assert f"{hub.data_dir / 'admin-password'} is no longer used" in log
        password = (hub.data_dir / "admin-credentials" / "prof").read_text().strip()
        assert sign_in(hub, "prof", "x" * 16)[1].status_code != 302
        assert sign_in(hub, "anyone", "y" * 16)[1].status_code != 302
        s, r = sign_in(hub, "prof", password)
        assert r.status_code == 302, r.text[:300]
        assert s.get(hub.url + "/hub/api/user", timeout=10).json()["admin"] is True
    finally:
        hub.cleanup(docker_client)


def test_a_sign_up_is_approved_only_from_the_authorize_page(hub):
    hub.start(env={"GPUHUB_ADMIN_USERS": "prof"})
    s = requests.Session()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', s.get(hub.url + "/hub/signup", timeout=10).text).group(1)
    form = {"username": "mallory", "signup_password": "a-long-attendee-password", "_xsrf": xsrf,
            "signup_password_confirmation": "a-long-attendee-password"}
    assert "sent to the admin" in s.post(hub.url + "/hub/signup", data=form, timeout=10).text
    admin, r = sign_in(hub, "prof", (hub.data_dir / "admin-credentials" / "prof").read_text().strip())
    assert r.status_code == 302

    def approve(headers: dict[str, str]) -> int:
        return admin.get(hub.url + "/hub/authorize/mallory", headers=headers, allow_redirects=False,
                         timeout=10).status_code

    page = hub.url + "/hub/authorize"
    assert approve({}) == 403  # a link opened on its own
    assert approve({"Referer": hub.url + "/user/mallory/lab", "Sec-Fetch-Site": "same-origin"}) == 403
    assert approve({"Referer": "http://evil.example/hub/authorize", "Sec-Fetch-Site": "cross-site"}) == 403
    assert approve({"Referer": "http://evil.example/hub/authorize"}) == 403
    assert sign_in(hub, "mallory", "a-long-attendee-password")[1].status_code == 403  # still waiting
    assert approve({"Referer": page, "Sec-Fetch-Site": "same-origin"}) == 302  # the button
    assert sign_in(hub, "mallory", "a-long-attendee-password")[1].status_code == 302
