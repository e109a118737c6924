"""The admin service's pages: rendered inside JupyterHub's own page.html, escaped, overridable."""

from __future__ import annotations

import re

import pytest
from sitetemplates import template_folders

from hub_services.admin.pages import JUPYTERHUB_TEMPLATES, PAGES, HubFrame, Pages, TemplateProblem

EVIL = '<img src=x onerror="alert(1)">'
ADMIN = {"name": "boss", "admin": True}
XSRF = '<input type="hidden" name="_xsrf" value="tok"/>'
FRAME = HubFrame("/jh/hub/", "gpuhub-admin", "/jh/services/gpuhub-admin/")
DATA = {
    "fields": ["max_gpu_units", "allowed_profiles"],
    "defaults": {"period": "week"},
    "groups": {},
    "overrides": {},
}
CONTEXT = {
    "gpuhub_admin_index.html": {"title": "GPU Hub", "tab": "", "allocs": [], "usage": []},
    "gpuhub_admin_quotas.html": {"title": "Quotas", "tab": "quotas", "data": DATA},
    "gpuhub_admin_roster.html": {"title": "Roster import", "tab": "roster"},
    "gpuhub_admin_charts.html": {"title": "Charts", "tab": "charts"},
    "gpuhub_admin_help.html": {"title": "Help an attendee", "tab": "help", "help_on": True,
                               "help": {"access": "full", "servers": [], "helping": []}},
    "gpuhub_admin_error.html": {"title": "Error 404", "message": "No such user."},
}


def render(name: str, user=ADMIN, pages: Pages | None = None, **context) -> str:
    return (pages or Pages(FRAME)).render(name, user, "tok", XSRF, **{**CONTEXT[name], **context})


def test_the_page_list_is_complete():
    assert set(CONTEXT) == set(PAGES)


@pytest.mark.parametrize("name", PAGES)
def test_every_page_is_inside_the_hubs_page_html(name):
    html = render(name)
    # JupyterHub's own navigation bar, Bootstrap 5 bundle and dark-mode toggle, from the hub's static files
    assert '<nav class="navbar navbar-expand-sm bg-body-tertiary mb-4">' in html
    assert '<img src="/jh/hub/logo"' in html and 'href="/jh/hub/home">Home</a>' in html
    assert 'href="/jh/hub/admin">Admin</a>' in html
    assert '<link rel="stylesheet" href="/jh/hub/static/css/style.min.css" />' in html
    assert 'src="/jh/hub/static/components/bootstrap/dist/js/bootstrap.bundle.min.js"' in html
    assert 'src="/jh/hub/static/js/darkmode.js"' in html and 'id="dark-theme-toggle"' in html
    assert '<span class="me-1">boss</span>' in html and 'href="/jh/hub/logout"' in html
    assert 'class="dropdown-item" href="/jh/services/gpuhub-admin/">gpuhub-admin</a>' in html
    assert f"<title>GPU Hub: {CONTEXT[name]['title']}</title>" in html and "<h1>" in html
    assert 'base_url: "/jh/hub/"' in html and 'prefix: "/jh/"' in html and 'xsrf_token: "tok"' in html
    tab = CONTEXT[name].get("tab")
    if tab is not None:
        assert f'<a class="nav-link active" href="/jh/services/gpuhub-admin/{tab}">' in html
        assert html.count("nav-link active") == 1


def test_an_instructor_sees_the_help_tab_alone_and_names_are_escaped():
    help_data = {"access": "full", "helping": [{"user": EVIL, "server": ""}],
                 "servers": [{"user": "a/b", "server": EVIL, "started": "2026-11-26T09:05:00Z", "helping": True}]}
    html = render("gpuhub_admin_help.html", user={"name": "tina", "admin": False}, help=help_data)
    tabs = re.findall(r'class="nav-link[^"]*" href="/jh/services/gpuhub-admin/([^"]*)"', html)
    assert tabs == ["help"]
    assert "<img src=x" not in html and "&lt;img src=x" in html
    assert 'action="/jh/services/gpuhub-admin/help/open/a%2Fb/%3Cimg' in html and "09:05 UTC" in html
    assert "help/close/a%2Fb/" in html  # held open: it can be closed
    # help off: no Help tab, even for an admin
    assert "/help" not in render("gpuhub_admin_index.html", help_on=False).split("<h1>")[0]


def test_an_error_page_before_sign_in_has_no_admin_tabs_and_offers_login():
    html = render("gpuhub_admin_error.html", user=None, message="Only hub admins may use this service.")
    assert 'id="login" role="button"' in re.sub(r"\s+", " ", html) and 'href="/jh/hub/login"' in html
    assert "nav-tabs" not in html and "Services</a>" not in html and "Admin</a>" not in html
    assert "Only hub admins may use this service." in html


def test_index_escapes_names_and_quotes_url_segments():
    allocs = [{"user": EVIL, "server": EVIL, "unit": EVIL, "pool": "gpu", "node": EVIL, "since": EVIL}]
    usage = [
        {
            "user": "a/b?c",
            "groups": [EVIL],
            "period": "week",
            "gpu_seconds": 5400,
            "budget_left_seconds": None,
            "servers": ["", "x/y"],
        },
        {"user": EVIL, "groups": [], "period": "week", "gpu_seconds": None, "error": EVIL, "servers": []},
    ]
    html = render("gpuhub_admin_index.html", allocs=allocs, usage=usage, message=EVIL)
    assert "<img src=x" not in html and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert 'action="/jh/services/gpuhub-admin/servers/a%2Fb%3Fc/stop"' in html
    assert 'action="/jh/services/gpuhub-admin/servers/a%2Fb%3Fc/x%2Fy/stop"' in html
    assert html.count(XSRF) == 2 and "<td>1.50 h</td>" in html and "<td>unlimited</td>" in html
    assert "<td>?</td>" in html and "stop default</button>" in html and "stop x/y</button>" in html


def test_quotas_escapes_and_shows_values():
    data = {
        **DATA,
        "defaults": {"x": EVIL},
        "groups": {EVIL: {"max_gpu_units": None}},
        "shares": {EVIL: {"gpu'>" + EVIL: {"guaranteed": 1, "burst": None}}},
        "overrides": {"u/v": {"allowed_profiles": ["a", EVIL]}},
    }
    html = render("gpuhub_admin_quotas.html", data=data)
    assert "<img src=x" not in html
    # the share as JSON in a single-quoted attribute: a quote or a tag in a pool name stays inside it
    assert "name=\"gpu_share\"" in html and "value='{\"gpu\\u0027\\u003e\\u003cimg src=x" in html
    assert "<h3>&lt;img src=x onerror=&#34;alert(1)&#34;&gt;</h3>" in html
    assert (
        'action="/jh/services/gpuhub-admin/quotas/groups/%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E"'
        in html
    )
    assert 'action="/jh/services/gpuhub-admin/quotas/users/u%2Fv/delete"' in html
    assert 'name="max_gpu_units" value="unlimited"' in html
    assert 'value="a, &lt;img src=x onerror=&#34;alert(1)&#34;&gt;"' in html
    assert html.count(XSRF) == 4  # group save, override save + remove, new override


def test_roster_report_escapes():
    report = {
        "applied": [{"line": 1, "github_username": EVIL, "group": "g"}],
        "rejected": [{"line": 2, "row": EVIL, "reason": EVIL}],
    }
    html = render("gpuhub_admin_roster.html", text="</textarea>" + EVIL, report=report)
    assert "<img src=x" not in html and "</textarea><img" not in html
    assert ">&lt;/textarea&gt;&lt;img" in html and "Applied (1)" in html and "Rejected (1)" in html


def test_the_user_name_cannot_leave_the_script_it_is_put_in():
    html = render("gpuhub_admin_index.html", user={"name": 'x"</script><script>alert(1)//', "admin": True})
    assert "</script><script>alert(1)" not in html
    assert r'user: "x\"\u003c/script\u003e\u003cscript\u003ealert(1)//"' in html


def test_an_operator_override_of_one_page_a_block_and_page_html(tmp_path):
    paths = template_folders(tmp_path, {
        "site": {
            # a footer on every admin page, by extending the built-in frame
            "gpuhub_admin_page.html": '{% extends "gpuhub/gpuhub_admin_page.html" %}'
            '{% block footer %}<footer id="site-footer">Ask {{ "TA & co" }}</footer>{% endblock %}',
            # the hub's page.html changed too, as an operator does for the hub itself
            "page.html": '{% extends "templates/page.html" %}'
            '{% block logo %}<span id="site-logo">Uni</span>{% endblock %}',
        },
        "later": {"gpuhub_admin_page.html": "a later folder loses"},
    })
    pages = Pages(FRAME, paths)
    pages.check()
    for name in PAGES:
        html = render(name, pages=pages)
        assert '<footer id="site-footer">Ask TA &amp; co</footer>' in html
        assert '<span id="site-logo">Uni</span>' in html and "jupyterhub-logo" not in html
        assert 'class="navbar navbar-expand-sm' in html and "later folder" not in html
    assert "site-footer" not in render("gpuhub_admin_index.html")


@pytest.mark.parametrize(
    "file, text, words",
    [
        (
            "gpuhub_admin_roster.html",
            "{% extends 'gpuhub_admin_page.html' %}{% block content %}{% if %}",
            "gpuhub_admin_roster.html does not compile (line 1",
        ),
        ("gpuhub_admin_page.html", "{% extends 'no-such-page.html' %}", "no-such-page.html"),
        ("page.html", "{{ 1 / 0 }}", "ZeroDivisionError"),
    ],
    ids=["syntax", "missing-parent", "raises"],
)
def test_a_broken_override_is_named_at_start(tmp_path, file, text, words):
    (tmp_path / file).write_text(text)
    with pytest.raises(TemplateProblem) as info:
        Pages(FRAME, [str(tmp_path)]).check()
    assert words in str(info.value) and "template_paths" in str(info.value)


def test_jupyterhub_templates_are_found():
    assert (JUPYTERHUB_TEMPLATES + "/page.html").endswith("templates/page.html")
    Pages(FRAME).check()


def test_the_service_refuses_to_start_on_a_broken_override(tmp_path, monkeypatch):
    from hub_services.admin.app import AdminServiceApp

    (tmp_path / "gpuhub_admin_quotas.html").write_text("{% block content %}")
    monkeypatch.setenv("GPUHUB_TEMPLATE_PATHS", str(tmp_path))
    app = AdminServiceApp()
    assert app.template_paths == [str(tmp_path)]
    with pytest.raises(SystemExit) as info:
        app.make_pages("/services/gpuhub-admin/")
    assert str(info.value).startswith("gpuhub-admin: the template ")
    assert "gpuhub_admin_quotas.html does not compile" in str(info.value)
    monkeypatch.delenv("GPUHUB_TEMPLATE_PATHS")
    assert AdminServiceApp().make_pages("/p/").frame.hub_prefix == "/hub/"
