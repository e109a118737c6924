"""One base for gpuhub's four hub-managed services (admin, culler, exporter, tutorial-sync).

What every service does the same way lives here once: where its settings come from
(``gpuhub.yaml``, :meth:`HubService.settings_from_file`; then the hub's ``JUPYTERHUB_*`` variables
and what the hub adds, :meth:`HubService.settings_from_environment`), logging, one HTTP server under the service's prefix, a ``metrics`` handler that asks for a
token with ``read:metrics``, and a prompt stop on SIGINT/SIGTERM
(:mod:`hub_services.common.shutdown`).  A service subclasses :class:`HubService`, adds its
own traits and handlers, and writes :meth:`HubService.serve`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubAuth
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Dict, Float, Unicode, default
from traitlets.config import Application, Config

from gpuhub_spawner.core import hubconfig
from gpuhub_spawner.core.config import ConfigFileError, file_settings
from gpuhub_spawner.core.quotas import QuotaError, parse_quota
from gpuhub_spawner.storage.db import SchemaError
from hub_services.common.hubapi import HubClient
from hub_services.common.shutdown import run_until_stopped

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(levelname)1.1s %(asctime)s %(name)s] %(message)s"


def _text(name: str) -> str:
    return os.environ[name]


def _words(name: str) -> list[str]:
    return [w.strip() for w in os.environ[name].split(",") if w.strip()]


def _paths(name: str) -> list[str]:
    return [p for p in os.environ[name].split(os.pathsep) if p]


def _json_object(name: str) -> dict[str, Any]:
    value = hubconfig.env_json(name, {})
    if not isinstance(value, dict):
        raise hubconfig.ConfigError(f"{name} must be a JSON object, such as {{\"period\": \"week\"}}")
    return value


def _json_list(name: str) -> list[Any]:
    value = hubconfig.env_json(name, [])
    if not isinstance(value, list):
        raise hubconfig.ConfigError(f"{name} must be a JSON list")
    return value


def _count(name: str) -> int:
    return int(hubconfig.env_number(name, 1, minimum=1))


#: Every environment variable a service reads: trait name -> (variable, how to read it).  A
#: variable that is unset or blank leaves the trait at its default; a service takes only the
#: traits it has.  The hub sets the JUPYTERHUB_* ones; jupyterhub_config.py the GPUHUB_* ones
#: that are per-process wiring or differ from gpuhub.yaml (gpuhub_spawner/hub/managed_services.py).
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "api_url": ("JUPYTERHUB_API_URL", _text),
    "api_token": ("JUPYTERHUB_API_TOKEN", _text),
    "service_url": ("JUPYTERHUB_SERVICE_URL", _text),
    "prefix": ("JUPYTERHUB_SERVICE_PREFIX", _text),
    "service_name": ("JUPYTERHUB_SERVICE_NAME", _text),
    "base_url": ("JUPYTERHUB_BASE_URL", _text),
    "template_paths": ("GPUHUB_TEMPLATE_PATHS", _paths),
    "usage_db_url": ("GPUHUB_USAGE_DB_URL", _text),
    "quota_defaults": ("GPUHUB_QUOTA_DEFAULTS", _json_object),
    "hub_id": ("GPUHUB_HUB_ID", _text),
    "gpu_agent_urls": ("GPUHUB_GPU_AGENT_URLS", _words),
    "gpu_inventory": ("GPUHUB_GPU_INVENTORY", _json_list),
    "gpu_discovery": ("GPUHUB_GPU_DISCOVERY", _text),
    "gpu_replicas_per_gpu": ("GPUHUB_REPLICAS_PER_GPU", _count),
    "gpu_profiles": ("GPUHUB_PROFILES", _json_list),
    "tutorial_sync_url": ("GPUHUB_TUTORIAL_SYNC_STATUS_URL", _text),
    "spawner": ("GPUHUB_SPAWNER", _text),
    "docker_host": ("GPUHUB_DOCKER_HOST", _text),
    "token": ("GPUHUB_TUTORIALS_TOKEN", _text),
    "webhook_secret": ("GPUHUB_WEBHOOK_SECRET", _text),
}


class HubService(Application):
    """A hub-managed gpuhub service: the hub's settings, a web server under its prefix, a clean stop.

    Settings come, lowest first, from gpuhub.yaml (:meth:`settings_from_file`), the
    environment (:meth:`settings_from_environment`), a config file, the command line, then
    keyword arguments.
    """

    #: the port of ``service_url`` when the hub does not say (run by hand)
    default_port = 8080
    #: largest request body read (tornado's default when None); bigger ones are refused unread
    max_body_size: int | None = None
    #: what the log calls the service ("Culler stopping")
    title = "gpuhub service"

    api_url = Unicode(
        "http://127.0.0.1:8081/hub/api", config=True, help="The hub's REST API (env JUPYTERHUB_API_URL)."
    )
    api_token = Unicode(config=True, help="This service's hub API token (env JUPYTERHUB_API_TOKEN).")
    service_url = Unicode(config=True, help="Where to listen (env JUPYTERHUB_SERVICE_URL).")
    prefix = Unicode("/", config=True, help="URL prefix (env JUPYTERHUB_SERVICE_PREFIX).")
    service_name = Unicode(config=True, help="This service's name in the hub (env JUPYTERHUB_SERVICE_NAME).")
    base_url = Unicode("/", config=True, help="The hub's base URL (env JUPYTERHUB_BASE_URL).")
    hub_timeout = Float(20, config=True, help="Seconds one request to the hub's API may take.")
    metrics_scope = Unicode(
        "read:metrics",
        config=True,
        help="""Scope a token needs to read this service's ``metrics`` (the one the hub's own
        /hub/metrics asks for; the ``prometheus`` service and hub admins hold it).  Empty: public.

            c.CullerApp.metrics_scope = "read:metrics"
        """,
    )

    @default("service_url")
    def _default_service_url(self) -> str:
        return f"http://127.0.0.1:{self.default_port}"

    def __init__(self, **kwargs: Any):
        #: what this service took from gpuhub.yaml (trait -> value)
        self.file_settings = self.settings_from_file()
        config = Config({type(self).__name__: {**self.file_settings, **self.settings_from_environment()}})
        if kwargs.get("config") is not None:
            config.merge(kwargs.pop("config"))
        super().__init__(config=config, **kwargs)

    def settings_from_file(self) -> dict[str, Any]:
        """This service's traits as ``gpuhub.yaml`` (``GPUHUB_CONFIG``) sets them; none without it.

        The file alone: the deprecated variables are the hub's, which passes what they change
        (:mod:`gpuhub_spawner.hub.managed_services`).  A bad file stops the service with the
        lines of ``gpuhub config check`` (exit 2, no traceback).
        """
        try:
            settings = file_settings(os.environ)
        except ConfigFileError as e:
            hubconfig.fail(*e.lines)
        except hubconfig.ConfigError as e:
            hubconfig.fail(str(e))
        names = set(self.class_trait_names(config=True))
        return {trait: value for trait, value in settings.items() if trait in names}

    def load_own_config_file(self, path: str, file_wins: tuple[str, ...] = ()) -> None:
        """Load this service's own config file (``--config``) over gpuhub.yaml and the environment.

        The traits in ``file_wins`` that gpuhub.yaml sets, then the command line, stay over it.
        """
        path = os.path.abspath(path)
        self.load_config_file(os.path.basename(path), path=os.path.dirname(path))
        wins = {trait: self.file_settings[trait] for trait in file_wins if trait in self.file_settings}
        if wins:
            self.update_config(Config({type(self).__name__: wins}))
        self.update_config(self.cli_config)  # the command line wins over the file

    def settings_from_environment(self) -> dict[str, Any]:
        """This service's traits as the environment sets them (:data:`ENVIRONMENT`).

        The one place a service reads its environment; a bad value stops it with a line
        naming the variable.
        """
        names = set(self.class_trait_names(config=True))
        settings = {}
        for trait, (variable, read) in ENVIRONMENT.items():
            if trait in names and os.environ.get(variable, "").strip():
                try:
                    settings[trait] = read(variable)
                except hubconfig.ConfigError as e:
                    raise SystemExit(f"{self.name}: {e}") from None
        return settings

    @property
    def url_prefix(self) -> str:
        """The service's prefix, ending in ``/``."""
        return self.prefix if self.prefix.endswith("/") else self.prefix + "/"

    def hub_client(self, **kwargs: Any) -> HubClient:
        """The hub's REST API with this service's token, ``hub_timeout`` on every request."""
        return HubClient(self.api_url, self.api_token, self.hub_timeout, **kwargs)

    def hub_auth(self, cls: type[HubAuth] = HubAuth, **kwargs: Any) -> HubAuth:
        """Checks tokens sent to this service (cached ``cache_max_age`` seconds)."""
        kwargs.setdefault("cache_max_age", 60)
        if self.api_token:  # HubOAuth refuses an empty one; run by hand, a service has none
            kwargs.setdefault("api_token", self.api_token)
        return cls(api_url=self.api_url, **kwargs)

    def listen(self, webapp: web.Application) -> HTTPServer:
        """Serve ``webapp`` at ``service_url``; larger bodies than ``max_body_size`` are refused unread."""
        url = urlparse(self.service_url)
        server = HTTPServer(webapp, xheaders=True, max_body_size=self.max_body_size)
        server.listen(url.port or 80, url.hostname or "127.0.0.1")
        return server

    async def serve(self) -> None:
        """Build, listen and run until cancelled (by a stop signal)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release what :meth:`serve` opened (databases), after it stopped."""

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """The console script: read gpuhub.yaml, the environment, config and command line, then serve.

        A usage database migrated by a newer gpuhub stops the service with one line saying so
        and what to do (no traceback: nothing here can fix it).
        """
        app = cls()
        app.initialize(argv)
        try:
            app.start()
        except SchemaError as e:
            print(f"{cls.name}: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    def start(self) -> None:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        try:
            asyncio.run(run_until_stopped(self.serve(), self.title))
        finally:
            self.cleanup()


class UsageService(HubService):
    """A service that reads the GPU usage ledger and quotas as the spawner has them."""

    usage_db_url = Unicode(
        config=True, help="The GPU usage ledger, as the spawner's usage_db_url (env GPUHUB_USAGE_DB_URL)."
    )
    quota_defaults = Dict(
        config=True,
        help="""Quota defaults, as the spawner's quota_defaults (env GPUHUB_QUOTA_DEFAULTS, JSON).

            c.CullerApp.quota_defaults = {"gpu_hours_per_period": 10, "period": "week"}
        """,
    )

    def checked_quota_defaults(self) -> dict[str, Any]:
        """``quota_defaults``, validated: a bad one stops the service naming the field."""
        try:
            parse_quota(self.quota_defaults, "quota defaults")
        except QuotaError as e:
            raise SystemExit(f"{self.name}: {e}; fix GPUHUB_QUOTA_DEFAULTS") from None
        return dict(self.quota_defaults)


class ServiceHandler(web.RequestHandler):
    """A handler answering errors as ``{"error": "..."}``, never with a traceback."""

    def error_message(self, status_code: int, exc: BaseException | None) -> str:
        if isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            return exc.log_message % exc.args if exc.args else exc.log_message
        return self._reason

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_header("Content-Type", "application/json")
        self.finish({"error": self.error_message(status_code, exc)})

    async def token_model(self) -> dict[str, Any] | None:
        """The hub's model of the request's token (``Authorization: token|bearer …``), or None.

        ``settings["hub_auth"]`` asks the hub; without a hub token (not run by a hub) nobody
        can be checked, so nobody is known.
        """
        kind, _, token = self.request.headers.get("Authorization", "").partition(" ")
        auth: HubAuth = self.settings["hub_auth"]
        if kind.lower() not in ("token", "bearer") or not token.strip() or not auth.api_token:
            return None
        return await auth.user_for_token(token.strip(), use_cache=True, sync=False)


class MetricsHandler(ServiceHandler):
    """``GET metrics``: Prometheus text for a token holding ``settings["metrics_scope"]``
    (``read:metrics``, what the hub's own ``/hub/metrics`` asks for); empty scope: public."""

    async def get(self) -> None:
        scope = self.settings["metrics_scope"]
        if scope:
            model = await self.token_model()
            if not model or scope not in (model.get("scopes") or []):
                raise web.HTTPError(403, f"These metrics need a hub token with the '{scope}' scope.")
        body = await self.metrics()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)

    async def metrics(self) -> bytes:
        """The exposition of ``settings["metrics_registry"]``."""
        return generate_latest(self.settings["metrics_registry"])
