"""What the browser tests share: Debian's Chromium (headless) and a folder for screenshots."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from needs import unavailable

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        unavailable("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver  # the test extra installs it

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture
def artifacts(request) -> Path:
    """This test's folder for screenshots, kept after the run: ``$GPUHUB_TEST_ARTIFACTS/<test>``
    (``GPUHUB_KEEP_SCREENSHOTS`` is read too), else ``test-artifacts/<test>`` at the repo's root."""
    root = os.environ.get("GPUHUB_TEST_ARTIFACTS") or os.environ.get("GPUHUB_KEEP_SCREENSHOTS")
    folder = Path(root or REPO / "test-artifacts") / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)  # this run's screenshots only
    folder.mkdir(parents=True)
    return folder
