"""The spawn form's image field in a real browser: a profile that runs its own image sends none.

The form fragment gpuhub renders (with DockerSpawner's ``allowed_images`` choices) is put in a
``<form>`` as JupyterHub's spawn page does, opened from a file; the script in the fragment turns
the field off while such a profile is checked, so the browser does not send it.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from gpuhub_spawner.core.inventory import Profile
from gpuhub_spawner.hub.forms import render_options_form

PROFILES = [Profile("cpu", "CPU only", default=True), Profile("workshop", "Workshop")]


def test_the_image_field_is_off_for_a_profile_with_its_own_image(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fragment = render_options_form(
        PROFILES, {}, {}, {}, images={"workshop": "workshop"}, default_image="singleuser",
        image_choices=["sci", "tiny"], image_chosen="sci",
    )
    page = tmp_path / "spawn.html"
    page.write_text(f'<html><body><form action="{tmp_path.as_uri()}/sent.html">{fragment}'
                    '<button type="submit">Start</button></form></body></html>')
    browser.get(page.as_uri())
    select = browser.find_element(By.NAME, "image")
    assert select.is_enabled()  # the default profile takes the choice

    browser.find_element(By.CSS_SELECTOR, "input[name=profile][value=workshop]").click()
    assert not select.is_enabled()
    browser.find_element(By.CSS_SELECTOR, "input[name=profile][value=cpu]").click()
    assert select.is_enabled()

    browser.find_element(By.CSS_SELECTOR, "input[name=profile][value=workshop]").click()
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # the click only starts the navigation: read the URL once the browser is on the next page
    WebDriverWait(browser, 30).until(lambda d: "/sent.html" in d.current_url)
    sent = parse_qs(urlparse(browser.current_url).query)
    assert sent == {"profile": ["workshop"]}  # no image with a profile that runs its own
