"""The profile picker and the checks on what users send back."""

from __future__ import annotations

import pytest
from sitetemplates import template_folders

from gpuhub_spawner.core.inventory import CPU_PROFILE, Profile
from gpuhub_spawner.hub.forms import (
    ProfileChoiceError,
    choose_profile,
    options_from_form,
    render_options_form,
)

SMALL = Profile("small", "MIG 1g.10gb", pool="mig-1g.10gb", description="An isolated slice.", default=True)
BIG = Profile("big", "Whole <b>GPU</b>", pool="gpu", description="Tom & Jerry's GPU")
PROFILES = [SMALL, BIG, CPU_PROFILE]


def row(html: str, slug: str) -> str:
    """The HTML of the radio row for ``slug``."""
    marker = f'value="{slug}"'
    assert marker in html, html
    start = html.rindex('<div class="radio', 0, html.index(marker))
    return html[start : html.index("</div>", start)]


def test_form_shows_free_counts_and_waiting():
    html = render_options_form(
        PROFILES, free={"mig-1g.10gb": 3, "gpu": 0}, sizes={"mig-1g.10gb": 7, "gpu": 2}, waiting={"gpu": 4}
    )
    assert "(3 of 7 free)" in row(html, "small")
    assert "(0 of 2 free, 4 waiting)" in row(html, "big")
    assert "(always available)" in row(html, "cpu")
    assert html.count('type="radio" name="profile"') == 3


def test_form_says_you_may_wait_when_full_and_nobody_waits():
    html = render_options_form([BIG, CPU_PROFILE], free={}, sizes={"gpu": 2}, waiting={})
    assert "(0 of 2 free, you may have to wait)" in row(html, "big")


def test_form_escapes_html():
    evil = Profile('x"><script>', "<script>alert(1)</script>", pool="gpu", description="<img src=x>")
    html = render_options_form([evil], free={"gpu": 1}, sizes={"gpu": 1}, waiting={})
    assert "<script>" not in html and "<img" not in html
    assert 'value="x&#34;&gt;&lt;script&gt;"' in html  # Jinja's autoescape spells " as &#34;
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Whole &lt;b&gt;GPU&lt;/b&gt;" in render_options_form(PROFILES, {}, {}, {})
    assert "Tom &amp; Jerry&#39;s GPU" in render_options_form(PROFILES, {}, {}, {})


def test_form_escapes_html_in_an_operator_template_too(tmp_path):
    (tmp_path / "gpuhub_spawn_form.html").write_text(
        "{% for row in rows %}<b id='{{ row.slug }}'>{{ row.name }}</b>{% endfor %}{{ notice }}"
    )
    evil = Profile('x"><script>', "<script>alert(1)</script>", pool="gpu", description="")
    html = render_options_form([evil], {}, {}, {}, notice="<img src=x>", template_paths=[str(tmp_path)])
    assert "<script>" not in html and "<img" not in html
    assert "<b id='x&#34;&gt;&lt;script&gt;'>&lt;script&gt;alert(1)&lt;/script&gt;</b>" in html


def test_an_operator_template_replaces_the_form_and_may_extend_the_built_in_one(tmp_path):
    paths = template_folders(tmp_path, {
        "site": {
            "gpuhub_spawn_form.html": '{% extends "gpuhub/gpuhub_spawn_form.html" %}'
            "{% block after_profiles %}<p class='site-note'>Ask {{ 'TA & co' }} for help.</p>{% endblock %}"
        },
        "other": {"gpuhub_spawn_form.html": "the later folder loses"},
    })
    html = render_options_form(PROFILES, {}, {}, {}, template_paths=paths)
    assert "<p class='site-note'>Ask TA &amp; co for help.</p>" in html
    assert " checked" in row(html, "small") and html.count('name="profile"') == 3
    assert "later folder" not in html
    assert "site-note" not in render_options_form(PROFILES, {}, {}, {}, template_paths=[str(tmp_path / "other" / "none")])


@pytest.mark.parametrize(
    "text", ["{% for row in rows %}unclosed", "{{ rows[0].name + 1 }}"], ids=["syntax", "raises"]
)
def test_an_override_that_does_not_render_falls_back_to_the_built_in_form(tmp_path, caplog, text):
    (tmp_path / "gpuhub_spawn_form.html").write_text(text)
    html = render_options_form(PROFILES, {}, {}, {}, template_paths=[str(tmp_path)])
    assert html.count('name="profile"') == 3 and "unclosed" not in html
    assert "does not render" in caplog.text and str(tmp_path) in caplog.text


def test_form_checks_the_default():
    html = render_options_form(PROFILES, {}, {}, {})
    assert " checked" in row(html, "small")
    assert " checked" not in row(html, "big") and " checked" not in row(html, "cpu")
    assert html.count(" checked") == 1


def test_form_checks_the_last_profile_when_none_is_default():
    html = render_options_form([BIG, CPU_PROFILE], {}, {}, {})
    assert " checked" in row(html, "cpu")
    assert html.count(" checked") == 1


def test_form_leaves_out_forbidden_profiles_and_checks_an_allowed_one():
    html = render_options_form(PROFILES, {"gpu": 1}, {"gpu": 1}, {}, allowed={"big", "cpu"})
    assert 'value="small"' not in html
    assert 'value="big"' in html
    assert " checked" in row(html, "cpu")  # the default is forbidden: fall back to the last one
    assert html.count(" checked") == 1


def test_form_shows_a_notice_and_says_when_nothing_is_allowed():
    html = render_options_form(PROFILES, {}, {}, {}, allowed=set(), notice="GPU time left this week: 2.0 h")
    assert "GPU time left this week: 2.0 h" in html
    assert "No server profile is available to you" in html and 'name="profile"' not in html


@pytest.mark.parametrize(
    "formdata, options",
    [
        ({"profile": ["big"]}, {"profile": "big"}),
        ({"profile": ["big", "small"]}, {"profile": "big"}),
        ({"profile": []}, {}),
        ({}, {}),
    ],
    ids=["one", "first-of-many", "empty-list", "absent"],
)
def test_options_from_form(formdata, options):
    assert options_from_form(formdata) == options


@pytest.mark.parametrize(
    "profiles, options, allowed, slug",
    [
        (PROFILES, {}, None, "small"),
        (PROFILES, {"profile": ""}, None, "small"),
        (PROFILES, None, None, "small"),
        (PROFILES, {"profile": "big"}, None, "big"),
        (PROFILES, {}, {"big", "cpu"}, "big"),
        ([BIG, CPU_PROFILE], {}, None, "big"),
        (PROFILES, {"profile": "cpu"}, {"cpu"}, "cpu"),
    ],
    ids=["default", "empty-string", "no-options", "named", "default-forbidden", "no-default", "allowed"],
)
def test_choose_profile(profiles, options, allowed, slug):
    assert choose_profile(profiles, options, allowed).slug == slug


@pytest.mark.parametrize(
    "options, allowed, reason, text",
    [
        (
            {"profile": "huge"},
            None,
            "bad-profile",
            "There is no profile called 'huge'. Choose one of: big, cpu, small.",
        ),
        ({"profile": "x" * 500}, None, "bad-profile", "'" + "x" * 64 + "'."),
        ({"profile": 3}, None, "bad-profile", "'profile' must be a profile name, not int."),
        ({"profile": ["big"]}, None, "bad-profile", "not list"),
        (
            {"profile": "big"},
            {"small"},
            "forbidden-profile",
            "You may not use the profile 'big'. Choose another one.",
        ),
        ({}, set(), "forbidden-profile", "No server profile is available to you."),
    ],
    ids=["unknown", "long-name-cut", "int", "list", "forbidden", "none-allowed"],
)
def test_choose_profile_errors(options, allowed, reason, text):
    with pytest.raises(ProfileChoiceError) as info:
        choose_profile(PROFILES, options, allowed)
    assert info.value.reason == reason
    assert text in str(info.value)
