"""The README's screenshots, taken in a real browser (Debian's Chromium) on a real hub.

An attendee signs in with (the FAKE) GitHub, sees the GPU profiles, waits in line for the one
whole GPU while someone else holds it, and lands in JupyterLab with the tutorials; an admin then
opens the GPU Hub page. Each picture is taken only after the page shows what the README says it
shows, so an error page never becomes a screenshot.

``GPUHUB_SCREENSHOTS_DIR=docs/screenshots`` writes the README's copies; otherwise they go to a
temporary folder and are only checked to be real PNGs of a sane size.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from fakes.fake_github import FakeGitHub
from test_browser import _hub, _progress_messages

pytestmark = [pytest.mark.docker, pytest.mark.hub]

WINDOW = (1100, 720)  # modest, so each PNG stays well under 200 KB
SHOTS = ("spawn-form", "queue", "jupyterlab-home", "jupyterlab-tutorials", "admin-holders", "admin-quotas",
         "admin-roster")
WELCOME = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": [
            "# Welcome to the workshop\n", "\n",
            "This folder is read-only and always holds the latest version.\n",
            "Edit your own copy in `~/my-tutorials`; keep data in `~/scratch`.",
        ]},
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
         "source": ["import os\n", "print(os.environ.get('NVIDIA_VISIBLE_DEVICES'))"]},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _tutorials(root: Path) -> Path:
    """What the tutorial sync would publish: a notebook and a data file, world-readable."""
    (root / "data").mkdir(parents=True)
    (root / "01-welcome.ipynb").write_text(json.dumps(WELCOME, indent=1))
    (root / "02-training.ipynb").write_text(json.dumps({**WELCOME, "cells": WELCOME["cells"][1:]}))
    (root / "data" / "labels.csv").write_text("id,label\n1,cat\n")
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR), after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is no PNG"
    return struct.unpack(">II", head[16:24])


def test_the_readme_screenshots_show_what_the_readme_says(browser, docker_client, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    out = Path(os.environ.get("GPUHUB_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(*WINDOW)
    wait = WebDriverWait(browser, 60)

    def shot(name: str, whole_page: bool = False) -> None:
        """Save the window; ``whole_page``: as tall as the page (up to 1600 px), for long forms."""
        if whole_page:
            height = browser.execute_script("return document.documentElement.scrollHeight")
            chrome = browser.get_window_size()["height"] - browser.execute_script("return window.innerHeight")
            browser.set_window_size(WINDOW[0], min(height + chrome, 1600))
        browser.save_screenshot(str(out / f"{name}.png"))
        browser.set_window_size(*WINDOW)

    def sign_in(login: str) -> None:
        github.signed_in = login
        browser.get(hub.url + "/hub/logout")
        browser.get(hub.url + "/hub/login")
        wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "Sign in with GitHub"))).click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=profile]")))

    def listing() -> set[str]:
        return {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".jp-DirListing-itemText")}

    with FakeGitHub() as github:
        github.add_user("ann", teams={"acme:gpu"})
        github.add_user("ada", teams={"acme:staff"})
        hub = _hub(tmp_path, github, admin_teams={f"acme:staff={github.id_of('acme:staff')}"})
        tutorials = _tutorials(tmp_path / "tutorials")
        with open(hub.workdir / "extra_config.py", "a") as config:  # the hub reads it at start
            config.write(f"c.GPUDockerSpawner.tutorials_source = {str(tutorials)!r}\n")
        with hub.kept_for_tests(docker_client):
            hub.start()
            # the attendee's form: every profile with what is free
            sign_in("ann")
            form = browser.find_element(By.CSS_SELECTOR, ".gpuhub-profiles").text
            assert "MIG 1g.10gb" in form and "2 of 2 free" in form and "1 of 1 free" in form, form
            assert "CPU only" in form
            shot("spawn-form")

            # someone else holds the only whole GPU: the attendee is told their place in line
            hub.create_users(["bob"])
            assert hub.spawn("bob", {"profile": "gpu"}).status_code in (201, 202)
            hub.wait_ready("bob")
            browser.find_element(By.CSS_SELECTOR, "input[name=profile][value='gpu']").click()
            browser.find_element(By.CSS_SELECTOR, "#spawn_form input[type=submit], #spawn_form button[type=submit]").click()
            _progress_messages(browser, until="You are #1 of 1 in line")
            wait.until(ec.text_to_be_present_in_element((By.ID, "progress-message"), "You are #1 of 1 in line"))
            browser.find_element(By.CSS_SELECTOR, "details summary").click()  # the event log, open
            wait.until(ec.visibility_of_element_located((By.ID, "progress-log")))
            shot("queue")

            # the GPU comes free: the attendee's server starts, in JupyterLab with the tutorials
            hub.stop_server("bob")
            WebDriverWait(browser, 180).until(ec.presence_of_element_located((By.ID, "jp-main-dock-panel")))
            assert "/user/ann/lab" in browser.current_url
            WebDriverWait(browser, 60).until(lambda d: {"tutorials", "my-tutorials", "scratch"} <= listing())
            for button in browser.find_elements(By.XPATH, "//div[contains(@class, 'Toastify')]//button[text()='No']"):
                button.click()  # JupyterLab's "official Jupyter news?" question, answered
            shot("jupyterlab-home")
            browser.get(hub.url + "/user/ann/lab/tree/tutorials/01-welcome.ipynb")
            WebDriverWait(browser, 90).until(
                ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".jp-MarkdownOutput"), "Welcome to the workshop")
            )
            WebDriverWait(browser, 30).until(lambda d: {"01-welcome.ipynb", "02-training.ipynb", "data"} <= listing())
            WebDriverWait(browser, 90).until(  # the notebook's kernel started in the server
                ec.text_to_be_present_in_element((By.ID, "jp-main-statusbar"), "Idle")
            )
            shot("jupyterlab-tutorials")

            # the admin's GPU Hub page: who holds which unit, group quotas, the roster import
            assert hub.api("POST", "/groups/students").status_code == 201
            sign_in("ada")
            browser.get(hub.url + "/services/gpuhub-admin/")
            wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "GPU Hub"))
            held = browser.find_element(By.XPATH, "//h2[text()='GPU units held now']/following-sibling::table[1]")
            assert "ann" in held.text and "GPU-br-" in held.text, held.text
            shot("admin-holders")
            browser.get(hub.url + "/services/gpuhub-admin/quotas")
            form = wait.until(
                ec.presence_of_element_located((By.XPATH, "//h3[text()='students']/following-sibling::form[1]"))
            )
            for name, value in (("max_gpu_units", "1"), ("gpu_hours_per_period", "6"), ("period", "day")):
                form.find_element(By.NAME, name).send_keys(value)
            browser.execute_script("arguments[0].click()", form.find_element(By.TAG_NAME, "button"))
            wait.until(lambda d: hub.api("GET", "/groups/students").json()["properties"].get("max_gpu_units") == 1)
            wait.until(ec.presence_of_element_located((By.XPATH, "//h3[text()='students']")))
            shot("admin-quotas", whole_page=True)
            browser.get(hub.url + "/services/gpuhub-admin/roster")
            roster = wait.until(ec.presence_of_element_located((By.NAME, "roster")))
            roster.send_keys("github_username,group,email\ncarol,students,carol@example.org\n"
                             "dave;students\n")
            button = browser.find_element(By.XPATH, "//button[text()='import']")
            browser.execute_script("arguments[0].click()", button)  # the page is taller than the window
            wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".gpuhub-admin"), "Rejected (1)"))
            assert "Applied (1)" in browser.find_element(By.CSS_SELECTOR, ".gpuhub-admin").text
            assert "carol" in hub.api("GET", "/groups/students").json()["users"]
            shot("admin-roster", whole_page=True)

    for name in SHOTS:
        path = out / f"{name}.png"
        width, height = _png_size(path)
        assert width >= 600 and 400 <= height <= 1600 and width <= 2 * WINDOW[0], (name, width, height)
        assert 5_000 < path.stat().st_size < 400_000, (name, path.stat().st_size)
