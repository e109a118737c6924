"""The admin service's HTML: Jinja templates inside JupyterHub's own ``page.html``.

The pages extend the hub's ``page.html`` (found in the installed jupyterhub package), so they
carry the hub's navigation bar, Bootstrap 5 and dark mode, with static files from the hub's own
``/hub/static/``. Every value is autoescaped. Operators override any template (ours or
``page.html``) by putting a file of that name in a folder of ``template_paths``, searched first;
``gpuhub/<name>`` and ``templates/<name>`` reach the built-in ones, to extend them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PrefixLoader,
    TemplateSyntaxError,
)
from jupyterhub._data import DATA_FILES_PATH
from markupsafe import Markup

TEMPLATES = str(Path(__file__).with_name("templates"))
JUPYTERHUB_TEMPLATES = os.path.join(DATA_FILES_PATH, "templates")
PAGES = (
    "gpuhub_admin_index.html",
    "gpuhub_admin_quotas.html",
    "gpuhub_admin_roster.html",
    "gpuhub_admin_charts.html",
    "gpuhub_admin_help.html",
    "gpuhub_admin_error.html",
)


class TemplateProblem(ValueError):
    """A template of the admin service cannot be used; ``str()`` says which and what to do."""


def hours(seconds: Any) -> str:
    return "unlimited" if seconds is None else f"{seconds / 3600:.2f} h"


def show(value: Any) -> str:
    """A quota field as the form shows it: None is 'unlimited', a list is comma-separated."""
    if value is None:
        return "unlimited"
    return ", ".join(value) if isinstance(value, list) else str(value)


def segment(value: Any) -> str:
    """One URL path segment (a user, group or server name), with every '/' and '?' quoted."""
    return quote(str(value), safe="")


def environment(template_paths: Sequence[str] = ()) -> Environment:
    """Templates from ``template_paths`` first, then gpuhub's, then JupyterHub's own."""
    loader = ChoiceLoader(
        [
            FileSystemLoader([*template_paths, TEMPLATES, JUPYTERHUB_TEMPLATES]),
            PrefixLoader(
                {"gpuhub": FileSystemLoader(TEMPLATES), "templates": FileSystemLoader(JUPYTERHUB_TEMPLATES)}
            ),
        ]
    )
    env = Environment(loader=loader, autoescape=True)
    env.filters.update(hours=hours, show=show, segment=segment)
    return env


@dataclass(frozen=True)
class PageUser:
    """The part of JupyterHub's ``User`` that page.html reads."""

    name: str
    admin: bool = True

    @property
    def json_escaped_name(self) -> str:
        # page.html puts it unescaped inside a <script> string: no way out of either
        return (
            json.dumps(self.name)[1:-1]
            .replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
        )


@dataclass(frozen=True)
class HubFrame:
    """Where the hub is, as this service sees it: what page.html needs besides the user."""

    hub_prefix: str = "/hub/"
    service_name: str = "gpuhub-admin"
    service_prefix: str = "/services/gpuhub-admin/"

    def static_url(self, path: str, include_version: bool = True) -> str:
        """The hub's own static files (``/hub/static/...``): its CSS, Bootstrap and dark mode."""
        return self.hub_prefix + "static/" + path

    def namespace(self, user: dict[str, Any] | None, xsrf_token: str) -> dict[str, Any]:
        """The variables JupyterHub's handlers give page.html, for the signed-in hub admin."""
        base = self.hub_prefix[: -len("hub/")] if self.hub_prefix.endswith("/hub/") else "/"
        page_user = PageUser(user["name"], bool(user.get("admin"))) if user else None
        return {
            "base_url": self.hub_prefix,
            "prefix": base,
            "static_url": self.static_url,
            "version_hash": "",
            "user": page_user,
            "admin_access": bool(page_user and page_user.admin),
            "no_spawner_check": True,
            "parsed_scopes": {"admin-ui"} if page_user and page_user.admin else set(),
            "services": [{"name": self.service_name, "href": self.service_prefix}] if page_user else [],
            "login_url": self.hub_prefix + "login",
            "logout_url": self.hub_prefix + "logout",
            "logo_url": "",
            "announcement": None,
            "xsrf_token": xsrf_token,
            "admin_prefix": self.service_prefix,
        }


class Pages:
    """The admin pages: ``render("gpuhub_admin_index.html", ...)`` for one request."""

    def __init__(self, frame: HubFrame, template_paths: Sequence[str] = ()):
        self.frame = frame
        self.template_paths = [str(p) for p in template_paths]
        self.env = environment(self.template_paths)

    def render(
        self,
        name: str,
        user: dict[str, Any] | None,
        xsrf_token: str,
        xsrf_form_html: str = "",
        **context: Any,
    ) -> str:
        values = self.frame.namespace(user, xsrf_token)
        values.update(xsrf_form_html=Markup(xsrf_form_html), message="", tab=None)
        values.update(context)
        return self.env.get_template(name).render(values)

    def check(self) -> None:
        """Render every page once with empty data, so a broken override (or a missing
        ``page.html``) stops the service at start, named. Raises :class:`TemplateProblem`."""
        sample = {"allocs": [], "usage": [], "text": "", "report": None}
        sample["data"] = {"fields": [], "defaults": {}, "groups": {}, "overrides": {}}
        for name in PAGES:
            try:
                self.render(name, None, "", title="check", **sample)
            except TemplateSyntaxError as e:
                raise TemplateProblem(
                    f"the template {e.filename or e.name} does not compile (line {e.lineno}: {e.message}); "
                    "fix it or remove it from the admin service's template_paths"
                ) from None
            except Exception as e:  # an operator's template may raise anything
                raise TemplateProblem(
                    f"the page {name} does not render ({type(e).__name__}: {e}); check the admin "
                    f"service's template_paths ({', '.join(self.template_paths) or 'none'})"
                ) from None
