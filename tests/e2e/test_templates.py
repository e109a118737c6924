"""The spawn form and the GPU Hub admin pages inside JupyterHub's own page, on a real hub, in a
real browser (Debian's Chromium); and an operator's templates (c.JupyterHub.template_paths)
picked up by both the hub's spawn form and the admin service. Screenshots go to the test
artifacts (tests/e2e/conftest.py: test-artifacts/ or $GPUHUB_TEST_ARTIFACTS).
"""

from __future__ import annotations

import textwrap
import time

import pytest
import requests
from harness import HubProcess, fake_gpus, render_form

pytestmark = [pytest.mark.docker, pytest.mark.hub]

ADMIN_PASSWORD = "admin-" + "y" * 40

# what an operator puts in a folder of c.JupyterHub.template_paths: one block of each built-in
# template changed, the rest kept (the built-in ones are reached as gpuhub/<name>)
SITE_TEMPLATES = {
    "gpuhub_spawn_form.html": """
        {% extends "gpuhub/gpuhub_spawn_form.html" %}
        {% block after_profiles %}<p id="site-form-note">Not sure? Ask {{ "Tom & Jerry" }}.</p>{% endblock %}
    """,
    "gpuhub_admin_page.html": """
        {% extends "gpuhub/gpuhub_admin_page.html" %}
        {% block footer %}<footer id="site-footer" class="container">Workshop staff: {{ user.name }}</footer>{% endblock %}
    """,
}


@pytest.fixture(scope="module")
def hub(docker_client, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("templates-hub")
    site = workdir / "site-templates"
    site.mkdir()
    for name, text in SITE_TEMPLATES.items():
        (site / name).write_text(textwrap.dedent(text).strip() + "\n")
    extra = textwrap.dedent(
        f"""
        c.Authenticator.admin_users = {{"boss"}}
        c.SharedPasswordAuthenticator.admin_password = {ADMIN_PASSWORD!r}
        c.JupyterHub.template_paths = [{str(site)!r}]
        """
    )
    hub = HubProcess(workdir, {"gpu_inventory": fake_gpus(2, "tp")}, extra)
    with hub.kept_for_tests(docker_client):
        hub.start()
        hub.base = hub.url + "/services/gpuhub-admin/"
        hub.create_users(["boss", "ann"])
        r = hub.api("POST", "/users/boss/tokens", json={"note": "templates test"})
        assert r.status_code == 201, r.text
        hub.admin_token = r.json()["token"]
        _wait_admin_page(hub)
        assert hub.api("POST", "/groups/students").status_code == 201
        yield hub


def _admin_get(hub: HubProcess, path: str = "") -> requests.Response:
    return requests.get(hub.base + path, headers={"Authorization": f"token {hub.admin_token}"}, timeout=30)


def _wait_admin_page(hub: HubProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _admin_get(hub).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"admin service did not answer:\n{hub.log_tail()}")


def test_an_operators_templates_change_the_real_spawn_form_and_admin_pages(hub):
    page = render_form(hub, "ann")
    # the hub's spawn.html around gpuhub's form, with the operator's block in it, escaped
    assert '<form enctype="multipart/form-data"' in page and 'id="spawn_form"' in page
    assert '<p id="site-form-note">Not sure? Ask Tom &amp; Jerry.</p>' in page
    assert 'class="radio form-check gpuhub-profile"' in page and "2 of 2 free" in page
    for path in ("", "quotas", "roster"):
        r = _admin_get(hub, path)
        assert r.status_code == 200, r.text[:300]
        assert '<footer id="site-footer" class="container">Workshop staff: boss</footer>' in r.text
        assert '<span id="jupyterhub-logo" class="navbar-brand">' in r.text


def test_the_spawn_form_and_admin_page_in_a_browser_look_like_the_hub(hub, browser, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(hub.url + "/hub/login")
    wait.until(ec.presence_of_element_located((By.ID, "username_input"))).send_keys("boss")
    browser.find_element(By.ID, "password_input").send_keys(ADMIN_PASSWORD)
    browser.find_element(By.ID, "login_submit").click()

    browser.get(hub.url + "/hub/spawn")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=profile]")))
    _hub_navigation_is_shown(browser)
    form = browser.find_element(By.CSS_SELECTOR, "#spawn_form .gpuhub-profiles")
    assert "2 of 2 free" in form.text and "Not sure? Ask Tom & Jerry." in form.text
    browser.save_screenshot(str(artifacts / "1-spawn-form.png"))

    browser.get(hub.base)  # through the hub's OAuth (no consent page for this service)
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "GPU Hub"))
    _hub_navigation_is_shown(browser)
    tabs = [a.text for a in browser.find_elements(By.CSS_SELECTOR, ".gpuhub-admin .nav-tabs .nav-link")]
    assert tabs == ["Allocations & usage", "Quotas", "Roster", "Charts", "Help"]
    assert browser.find_element(By.ID, "site-footer").is_displayed()
    browser.save_screenshot(str(artifacts / "2-gpu-hub-admin.png"))

    # the hub's dark-mode toggle works here too (the hub's own darkmode.js)
    browser.find_element(By.ID, "dark-theme-toggle").click()
    theme = browser.execute_script("return document.documentElement.getAttribute('data-bs-theme')")
    assert theme == "dark"
    browser.get(hub.base + "quotas")  # the choice is kept across pages, as on the hub
    wait.until(ec.presence_of_element_located((By.XPATH, "//h3[text()='students']")))
    assert browser.execute_script("return document.documentElement.getAttribute('data-bs-theme')") == "dark"
    browser.save_screenshot(str(artifacts / "3-gpu-hub-quotas-dark.png"))


def _hub_navigation_is_shown(browser) -> None:
    """JupyterHub's own navigation bar is on screen and styled by the hub's CSS and Bootstrap 5."""
    from selenium.webdriver.common.by import By

    nav = browser.find_element(By.CSS_SELECTOR, "nav.navbar")
    assert nav.is_displayed() and nav.size["height"] > 30
    assert browser.find_element(By.CSS_SELECTOR, "#jupyterhub-logo img").is_displayed()
    links = {a.text for a in nav.find_elements(By.CSS_SELECTOR, "a.nav-link") if a.is_displayed()}
    assert {"Home", "Token", "Admin", "Services"} <= links, links
    assert browser.find_element(By.ID, "logout").is_displayed()
    # Bootstrap's CSS arrived from /hub/static: the bar is a flex row with the tertiary background
    style = browser.execute_script(
        "const s = getComputedStyle(arguments[0]); return [s.display, s.backgroundColor];", nav
    )
    assert style[0] == "flex" and style[1] not in ("", "rgba(0, 0, 0, 0)"), style
    assert browser.execute_script("return typeof bootstrap") == "object"
