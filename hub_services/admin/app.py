"""The "GPU Hub" admin service: a web page and a JSON API for hub admins only.

Runs as a hub-managed service (``python -m hub_services.admin``), under its prefix:

==============================================  ==============================================
``GET  api/allocations``                         open GPU allocations from the usage ledger
``GET  api/usage``                               per user: GPU-seconds this period, budget left
``GET  api/quotas``                              defaults, group quota fields, user overrides
``PUT  api/quotas/groups/{group}``               merge quota fields, ``gpu_share`` and ``gpu_reservations`` into
                                                  the group's properties
``PUT|DELETE api/quotas/users/{user}``           set or remove a user's override
``POST api/roster``                              import ``github_username,group`` rows
``POST api/servers/{user}[/{server}]/stop``      stop a server
``GET  api/help``                                instructor help: attendees' running servers
``POST|DELETE api/help/{user}[/{server}]``       open an attendee's server to the caller, or close it
``GET  ``, ``quotas``, ``roster``, ``charts``    the HTML pages; their forms POST to the same
``GET  help``, ``POST help/open|close/...``      paths without ``api/`` (help: open|close)
==============================================  ==============================================

Every route needs a hub user whose hub model says ``admin: true`` (HubOAuth: browser cookie
after the OAuth flow, or ``Authorization: token ...``); anyone else gets 403.  The help routes
(:mod:`hub_services.admin.instructor_help`) also let in members of the instructors group, and nothing else
does.  Forms carry an
``_xsrf`` token; API calls authenticated by a token header are exempt.  The service reads with
its own token (a read-only role); every change is made with the admin's own token: the one in
the request's header, or the OAuth token the hub gave the admin's browser for this service
(``oauth_client_allowed_scopes`` in ``jupyterhub_config.py`` bound what that one may do).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
from typing import Any

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from jupyterhub.utils import url_path_join
from tornado import web
from traitlets import List, Unicode

from gpuhub_spawner.core.quotas import FIELDS
from gpuhub_spawner.storage.ledger import UsageLedger
from hub_services.admin import core, instructor_help, pages
from hub_services.common.base import UsageService

log = logging.getLogger(__name__)


class Base(HubOAuthenticated, web.RequestHandler):
    api = False
    #: instructors (not only admins) may use this route
    for_helpers = False

    @property
    def ctx(self) -> core.Context:
        """The service's context, acting as the signed-in admin: their token (header or OAuth cookie)."""
        if getattr(self, "_ctx", None) is None:
            base: core.Context = self.settings["admin_context"]
            token = self.hub_auth.get_token(self) if self.current_user else None
            actor = base.hub.with_token(token) if token else None
            self._ctx = dataclasses.replace(base, actor=actor)
        return self._ctx

    @property
    def prefix(self) -> str:
        return self.settings["admin_prefix"]

    @property
    def policy(self) -> instructor_help.HelpPolicy:
        return self.settings["help_policy"]

    def check_hub_user(self, model: dict[str, Any]) -> dict[str, Any]:
        model = super().check_hub_user(model)  # the token may access this service at all
        if model.get("kind", "user") == "user" and model.get("admin") is True:
            return model
        if self.for_helpers and self.policy.may_help(model):
            return model
        log.warning("Refused %s %s: not a hub admin%s", model.get("kind", "user"), model.get("name"),
                    " or instructor" if self.for_helpers else "")
        raise UserNotAllowed(model)

    def check_xsrf_cookie(self) -> None:
        # Tornado checks before we know how the request is authenticated; with a token header
        # the check is made in prepare(), once we know whether the token (not a cookie) was used.
        if self.request.headers.get("Authorization"):
            return
        super().check_xsrf_cookie()

    def prepare(self) -> None:
        if self.current_user is None:
            if self.api or self.request.method not in ("GET", "HEAD"):
                raise web.HTTPError(403, "Only hub admins may use this service.")
            self.redirect(self.get_login_url())  # raises 403 for a signed-in non-admin
            return
        if self.request.method not in ("GET", "HEAD") and not getattr(self, "_token_authenticated", False):
            HubOAuthenticated.check_xsrf_cookie(self)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, core.AdminError):  # e.g. a bad name in the URL
            self.send_error(e.status, exc_info=(type(e), e, None))
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, core.AdminError):
            reason = exc.message
        elif isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        if self.api:
            self.finish(exc.as_dict() if isinstance(exc, core.AdminError) else {"error": reason})
        else:
            self.finish(
                self.render_page("gpuhub_admin_error.html", title=f"Error {status_code}", message=reason)
            )

    async def attempt(self, coro: Any, fallback: Any) -> tuple[Any, str]:
        """``(its result, "")``, or ``(fallback, what went wrong)``: a page shows an AdminError
        above what it could still show, instead of failing whole."""
        try:
            return await coro, ""
        except core.AdminError as e:
            return fallback, e.message

    def render_page(self, name: str, **context: Any) -> str:
        """One admin page inside the hub's page.html, for the signed-in admin (see pages.py)."""
        xsrf = self.xsrf_form_html() if self.current_user else ""
        token = self.xsrf_token.decode() if self.current_user else ""
        return self.settings["admin_pages"].render(name, self.current_user, token, xsrf,
                                                   help_on=self.policy.on, **context)


class ApiBase(Base):
    api = True

    def body_json(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except (ValueError, RecursionError):
            raise web.HTTPError(400, "The body is not valid JSON.") from None

    async def answer(self, coro: Any, status: int = 200) -> None:
        try:
            result = await coro
        except core.AdminError as e:
            self.set_status(e.status)
            self.finish(e.as_dict())
            return
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result))


async def _value(value: Any) -> Any:
    return value


class ApiAllocations(ApiBase):
    async def get(self) -> None:
        await self.answer(_value(core.allocations(self.ctx)))


class ApiUsage(ApiBase):
    async def get(self) -> None:
        await self.answer(core.usage(self.ctx))


class ApiQuotas(ApiBase):
    async def get(self) -> None:
        await self.answer(core.quotas(self.ctx))


class ApiGroupQuota(ApiBase):
    async def put(self, group: str) -> None:
        await self.answer(
            core.edit_group_quota(self.ctx, core.check_name(group, "group name"), self.body_json())
        )


class ApiUserQuota(ApiBase):
    async def put(self, user: str) -> None:
        body = self.body_json()
        await self.answer(
            core.set_override(self.ctx, core.check_name(user, "user name"), body, self.current_user["name"])
        )

    async def delete(self, user: str) -> None:
        await self.answer(core.delete_override(self.ctx, core.check_name(user, "user name")))


class ApiRoster(ApiBase):
    async def post(self) -> None:
        ctype = self.request.headers.get("Content-Type", "")
        if "json" in ctype:
            body = self.body_json()
        else:
            try:
                body = self.request.body.decode("utf-8")
            except UnicodeDecodeError:
                raise web.HTTPError(400, "The roster is not UTF-8 text.") from None
        await self.answer(core.import_roster(self.ctx, body))


class ApiStop(ApiBase):
    async def post(self, user: str, server: str | None) -> None:
        await self.answer(core.stop_server(self.ctx, core.check_name(user, "user name"), server), 202)


class IndexPage(Base):
    async def get(self, message: str = "") -> None:
        usage, error = await self.attempt(core.usage(self.ctx), [])
        allocs = core.allocations(self.ctx)
        self.finish(
            self.render_page(
                "gpuhub_admin_index.html", title="GPU Hub", tab="", message=error or message, allocs=allocs, usage=usage
            )
        )


class ChartsPage(Base):
    async def get(self) -> None:
        pictures, error = await self.attempt(core.charts(self.ctx), {})
        self.finish(self.render_page("gpuhub_admin_charts.html", title="Charts", tab="charts", message=error,
                                     **pictures))


class ApiCharts(ApiBase):
    async def get(self) -> None:
        await self.answer(core.charts(self.ctx))


class QuotasPage(Base):
    async def get(self) -> None:
        await self.show()

    async def show(self, message: str = "", status: int = 200) -> None:
        unread = {"fields": list(FIELDS), "defaults": self.ctx.defaults, "groups": {}, "overrides": {}}
        data, error = await self.attempt(core.quotas(self.ctx), unread)
        message = message or error
        self.set_status(status)
        self.finish(
            self.render_page(
                "gpuhub_admin_quotas.html", title="Quotas", tab="quotas", message=message, data=data
            )
        )

    def form_fields(self) -> dict[str, str]:
        return {f: v for f in FIELDS if (v := self.get_body_argument(f, None)) is not None}

    async def apply(self, coro: Any) -> None:
        try:
            await coro
        except core.AdminError as e:
            await self.show(e.message, e.status)
            return
        self.redirect(self.prefix + "quotas")


class GroupQuotaForm(QuotasPage):
    async def post(self, group: str) -> None:
        extra = {k: v for k in core.GROUP_ONLY if (v := self.get_body_argument(k, None)) is not None}
        fields = {**self.form_fields(), **extra}
        await self.apply(
            core.edit_group_quota(self.ctx, core.check_name(group, "group name"), fields)
        )


class UserQuotaForm(QuotasPage):
    async def post(self, user: str | None = None, delete: str | None = None) -> None:
        user = core.check_name(user or self.get_body_argument("user", "").strip(), "user name")
        if delete:
            await self.apply(core.delete_override(self.ctx, user))
        else:
            await self.apply(core.set_override(self.ctx, user, self.form_fields(), self.current_user["name"]))


class RosterPage(Base):
    async def get(self) -> None:
        self.finish(self.render_page("gpuhub_admin_roster.html", title="Roster import", tab="roster"))

    async def post(self) -> None:
        text = self.get_body_argument("roster", "")
        report, message = await self.attempt(core.import_roster(self.ctx, text), None)
        self.finish(
            self.render_page(
                "gpuhub_admin_roster.html", title="Roster import", tab="roster", message=message, text=text, report=report
            )
        )


class StopForm(Base):
    async def post(self, user: str, server: str | None) -> None:
        try:
            await core.stop_server(self.ctx, core.check_name(user, "user name"), server)
        except core.AdminError as e:
            await IndexPage.get(self, e.message)  # type: ignore[arg-type]
            return
        self.redirect(self.prefix)


class HelpPage(Base):
    for_helpers = True

    async def get(self) -> None:
        await self.show()

    async def show(self, message: str = "", status: int = 200) -> None:
        data, error = await self.attempt(instructor_help.overview(self.ctx, self.policy, self.current_user["name"]), None)
        self.set_status(status)
        self.finish(self.render_page("gpuhub_admin_help.html", title="Help an attendee", tab="help",
                                     message=message or error, help=data))


class HelpForm(HelpPage):
    async def get(self, *_args: Any) -> None:  # type: ignore[override]
        self.redirect(self.prefix + "help")

    async def post(self, verb: str, user: str, server: str | None) -> None:
        user, server = core.check_name(user, "user name"), server or ""
        act = instructor_help.start if verb == "open" else instructor_help.end
        try:
            await act(self.ctx, self.policy, self.current_user["name"], user, server)
        except core.AdminError as e:
            await self.show(e.message, e.status)
            return
        if verb == "open":
            self.redirect(instructor_help.server_url(self.settings["base_url"], user, server), status=303)
        else:
            self.redirect(self.prefix + "help", status=303)


class ApiHelp(ApiBase):
    for_helpers = True

    async def get(self) -> None:
        await self.answer(instructor_help.overview(self.ctx, self.policy, self.current_user["name"]))


class ApiHelpServer(ApiBase):
    for_helpers = True

    async def post(self, user: str, server: str | None) -> None:
        user = core.check_name(user, "user name")
        await self.answer(instructor_help.start(self.ctx, self.policy, self.current_user["name"], user, server or ""))

    async def delete(self, user: str, server: str | None) -> None:
        user = core.check_name(user, "user name")
        await self.answer(instructor_help.end(self.ctx, self.policy, self.current_user["name"], user, server or ""))


def routes(prefix: str) -> list[tuple[str, type[web.RequestHandler]]]:
    name, opt_server = r"([^/]+)", r"(?:/([^/]+))?"
    return [
        (prefix, IndexPage),
        (prefix + "oauth_callback", HubOAuthCallbackHandler),
        (prefix + "quotas", QuotasPage),
        (prefix + "quotas/groups/" + name, GroupQuotaForm),
        (prefix + "quotas/users", UserQuotaForm),
        (prefix + "quotas/users/" + name + "(/delete)?", UserQuotaForm),
        (prefix + "roster", RosterPage),
        (prefix + "charts", ChartsPage),
        (prefix + "servers/" + name + opt_server + "/stop", StopForm),
        (prefix + "help", HelpPage),
        (prefix + "help/(open|close)/" + name + opt_server, HelpForm),
        (prefix + "api/allocations", ApiAllocations),
        (prefix + "api/usage", ApiUsage),
        (prefix + "api/charts", ApiCharts),
        (prefix + "api/quotas", ApiQuotas),
        (prefix + "api/quotas/groups/" + name, ApiGroupQuota),
        (prefix + "api/quotas/users/" + name, ApiUserQuota),
        (prefix + "api/roster", ApiRoster),
        (prefix + "api/servers/" + name + opt_server + "/stop", ApiStop),
        (prefix + "api/help", ApiHelp),
        (prefix + "api/help/" + name + opt_server, ApiHelpServer),
    ]


class AdminServiceApp(UsageService):
    """gpuhub-admin: the "GPU Hub" admin page and JSON API, for hub admins only."""

    name = "gpuhub-admin"
    default_port = 8766
    title = "GPU Hub admin service"
    template_paths = List(
        Unicode(),
        config=True,
        help="Folders searched first for the pages' Jinja templates (env GPUHUB_TEMPLATE_PATHS, "
        "os.pathsep-separated; jupyterhub_config.py passes the hub's c.JupyterHub.template_paths). "
        "A gpuhub_admin_*.html or page.html there replaces the built-in one; see README 'Templates'. "
        'e.g. c.AdminServiceApp.template_paths = ["/etc/gpuhub/templates"].',
    )

    instructors_group = Unicode(
        "instructors",
        config=True,
        help="Members of this hub group may open attendees' running servers from the Help tab "
        "(instructors.group in gpuhub.yaml; the hub passes it). Empty: instructor help is off.",
    )
    help_access = Unicode("full", config=True, help="What a helper may do in the server: full.")
    prometheus_url = Unicode(
        "", config=True,
        help="""Prometheus (metrics.prometheus_url in gpuhub.yaml): the charts' units held and people
        waiting come from it, sampled over the day (waits under way included); empty, or when it
        does not answer (the page says so): from the usage ledger.""",
    )

    aliases = {
        "instructors-group": "AdminServiceApp.instructors_group",
        "help-access": "AdminServiceApp.help_access",
        "prometheus-url": "AdminServiceApp.prometheus_url",
        "usage-db-url": "AdminServiceApp.usage_db_url",
        "hub-timeout": "AdminServiceApp.hub_timeout",
        "url": "AdminServiceApp.service_url",
    }

    def make_pages(self, prefix: str) -> pages.Pages:
        hub_prefix = url_path_join(self.base_url, "hub/")
        frame = pages.HubFrame(hub_prefix, self.service_name or self.name, prefix)
        admin_pages = pages.Pages(frame, self.template_paths)
        try:
            admin_pages.check()
        except pages.TemplateProblem as e:
            raise SystemExit(f"gpuhub-admin: {e}") from None
        return admin_pages

    def make_context(self) -> core.Context:
        if not self.usage_db_url or not self.api_token:
            raise SystemExit(
                "gpuhub-admin: set GPUHUB_USAGE_DB_URL and run it as a hub service (JUPYTERHUB_API_TOKEN)"
            )
        defaults = self.checked_quota_defaults()
        return core.Context(self.hub_client(), UsageLedger(self.usage_db_url), defaults,
                            prometheus_url=self.prometheus_url)

    def make_web_app(self, ctx: core.Context) -> web.Application:
        prefix = self.url_prefix
        return web.Application(
            routes(prefix),
            admin_context=ctx,
            admin_prefix=prefix,
            admin_pages=self.make_pages(prefix),
            help_policy=instructor_help.HelpPolicy(self.instructors_group, self.help_access),
            base_url=self.base_url,
            cookie_secret=secrets.token_bytes(32),
            xsrf_cookies=True,
        )

    async def serve(self) -> None:
        self.ctx = ctx = self.make_context()
        self.listen(self.make_web_app(ctx))
        log.info("GPU Hub admin service listening on %s%s", self.service_url, self.prefix)
        await asyncio.Event().wait()

    def cleanup(self) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            ctx.ledger.dispose()


main = AdminServiceApp.main
