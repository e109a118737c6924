"""gpuhub-culler: the GPU-aware idle culler, as a hub-managed service.

Runs ``python -m hub_services.culler`` (the hub starts it) and passes over every running
server every ``every`` seconds.  Under its prefix it serves:

====================================  =========================================================
``GET  metrics``                      Prometheus metrics (counts only, no user names); needs a
                                      token with ``read:metrics`` (``metrics_scope``), as the
                                      ``prometheus`` service and hub admins hold
``POST api/pass``                     run a pass now, answer its decisions (hub admins, or a
                                      token with ``access:services!service=<this service>``)
``POST api/keepalive[?server=NAME]``  the calling user keeps one of their *running* servers:
                                      counts as activity (any token of theirs); another name
                                      is refused with 400
====================================  =========================================================

Request bodies are capped at 64 KiB (nothing here needs more).

Config: a file (``--config=culler.json`` or ``culler_config.py``, traitlets format) and the
command line (``--idle-gpu-timeout=600 --gpu-agent-url=http://node1:9445``).  Its role
(``jupyterhub_config.py``) holds only the scopes it uses: list users with their activity,
servers and groups, read group properties, stop servers.  It cannot reach users' servers:
its token is never sent to one.

It reads container labels, writes the notice file and asks servers about their kernels
through the local Docker engine, as the hub itself does (``docker_notices``): the kernel
probe runs inside the container with the server's own token (:mod:`.probe`).  On a swarm
(``spawner = "swarm"``), servers on other nodes are found from the manager's tasks and get
their probe and notice through their node's agent (:mod:`.swarm`); with ``gpu_agent_urls``
empty, the GPU nodes' agents are found there too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from tornado import web
from traitlets import Bool, Dict, Float, Integer, List, Unicode

from gpuhub_spawner.core.config import CULLER_TIMINGS
from gpuhub_spawner.node.kernel_probe import NOTICE_PATH
from gpuhub_spawner.storage.ledger import UsageLedger
from gpuhub_spawner.storage.notices import NoticeStore
from hub_services.common.base import LOG_FORMAT, MetricsHandler, ServiceHandler, UsageService
from hub_services.common.hubapi import HubAPIError
from hub_services.culler import core
from hub_services.culler.decide import GPUThresholds
from hub_services.culler.metrics import CullerMetrics
from hub_services.culler.signals import Containers
from hub_services.culler.swarm import AGENT_URL, AgentCalls, SwarmServers

log = logging.getLogger(__name__)
#: bytes a request body may have (keep-alives and triggers send none)
MAX_BODY = 64 * 1024
#: characters of a server name (the hub's own column is 255)
MAX_SERVER_NAME = 255


class _Base(ServiceHandler):
    async def identify(self) -> dict[str, Any]:
        if not self.request.headers.get("Authorization", "").strip():
            raise web.HTTPError(403, "Send a hub token: Authorization: token ...")
        model = await self.token_model()
        if not model:
            raise web.HTTPError(403, "The hub does not know this token.")
        return model


class PassHandler(_Base):
    async def post(self) -> None:
        model = await self.identify()
        auth = self.settings["hub_auth"]
        admin = model.get("kind", "user") == "user" and model.get("admin") is True
        if not admin and not auth.check_scopes(auth.access_scopes, model):
            raise web.HTTPError(403, "Only hub admins and services granted access to the culler may trigger a pass.")
        try:
            results = await core.run_once(self.settings["ctx"], self.settings["culler_settings"])
        except HubAPIError as e:
            raise web.HTTPError(502, f"The pass failed: {e}") from None
        self.finish({"servers": results})


class KeepaliveHandler(_Base):
    async def post(self) -> None:
        model = await self.identify()
        if model.get("kind", "user") != "user":
            raise web.HTTPError(403, "Keep-alives come from the server's own user.")
        server = self.get_query_argument("server", "")
        ctx: core.Context = self.settings["ctx"]
        if ctx.notices is None:
            raise web.HTTPError(503, "Keep-alives need the usage database (usage_db_url).")
        running = await self._running(ctx, model["name"]) if len(server) <= MAX_SERVER_NAME else set()
        if server not in running:
            what = "your default server" if not server else "a server of yours with that name"
            raise web.HTTPError(400, f"Nothing to keep: {what} is not running. Name a running server (?server=NAME).")
        await asyncio.to_thread(ctx.notices.keepalive, model["name"], server, None, running)
        log.info("Keep-alive from %s for server %r", model["name"], server)
        self.finish({"user": model["name"], "server": server, "kept": True})

    async def _running(self, ctx: core.Context, user: str) -> set[str]:
        try:
            return await ctx.hub.running_servers(user)
        except HubAPIError as e:
            log.warning("Keep-alive of %s: cannot read their servers: %s", user, e)
            raise web.HTTPError(503, "The hub does not answer now; try again in a minute.") from None


class CullerApp(UsageService):
    """gpuhub-culler: stop idle servers (hub, kernel and GPU signals), old ones and over-budget GPU ones."""

    name = "gpuhub-culler"
    description = __doc__

    # ---- hub and service -----------------------------------------------------------------
    default_port = 8767
    max_body_size = MAX_BODY
    title = "Culler"
    config_file = Unicode("", config=True, help="A config file: JSON (.json) or traitlets Python (.py).")
    concurrency = Integer(
        20, config=True, help="Requests in flight at once during a pass (hub API, servers, agents)."
    )
    page_size = Integer(200, config=True, help="Users per page when listing the hub's users.")

    # ---- when -----------------------------------------------------------------------------
    every = Float(
        60, config=True,
        help="""Seconds between passes; 0 runs no timed passes (only api/pass triggers, or --once).

            c.CullerApp.every = 120
        """,
    )
    once = Bool(False, config=True, help="Run one pass, print its decisions as JSON, and exit.")
    dry_run = Bool(False, config=True, help="Decide and log, but stop nothing and warn no one.")

    # ---- limits ---------------------------------------------------------------------------
    idle_cpu_timeout = Float(
        3600, config=True, help="Seconds a CPU-only server may be idle (0: never culled for idleness)."
    )
    idle_gpu_timeout = Float(
        1200, config=True,
        help="""Seconds a server holding a GPU unit may be idle; shorter than CPU ones, as GPUs are scarce.

            c.CullerApp.idle_gpu_timeout = 900
        """,
    )
    profile_idle_timeouts = Dict(
        config=True,
        help="""Idle timeout per profile slug, in seconds, over the GPU/CPU defaults.

            c.CullerApp.profile_idle_timeouts = {"a100": 600, "mig-1g-10gb": 1200, "cpu": 7200}
        """,
    )
    warn_seconds = Float(
        300, config=True,
        help="""Seconds between the warning (hub pages, notice file) and the cull; 0 culls without one.""",
    )
    budget_warn_seconds = Float(
        1800, config=True,
        help="""Seconds before a GPU-hour budget runs out that its user is told ("budget running
        low": hub pages, JupyterLab, the notice file); warn_seconds when that is longer.""",
    )
    reclaim_idle_timeout = Float(
        600, config=True,
        help="""Seconds a GPU server may be idle while it holds a unit beyond its group's share (or
        belongs to no group with a share) and members of a group with a guaranteed share or a
        reservation wait in that pool's line (the hub's GET /hub/api/gpuhub/lines).  Such servers
        are reclaimed first; a busy one is kept.  Keep it above warn_seconds: the warning comes
        warn_seconds before the end of it.""",
    )
    reclaim_after = Float(
        600, config=True,
        help="""Seconds a member of a group with a reservation waits for a unit of it lent to
        someone else before one borrower (the most recently started) is warned and stopped, busy
        or not.  The member waits at most this plus warn_seconds plus a start.""",
    )
    # quota_defaults and usage_db_url (which also holds warnings and keep-alives): UsageService

    # ---- GPU signal -----------------------------------------------------------------------
    gpu_agent_urls = List(
        Unicode(), config=True,
        help="""Node agents serving GET /api/activity (repeat --gpu-agent-url, or env GPUHUB_GPU_AGENT_URLS,
        comma-separated).  Empty: no GPU signal.  An agent that does not answer makes its
        servers count as busy.""",
    )
    gpu_utilization_threshold = Integer(5, config=True, help="Utilization (%) that counts as GPU work.")
    gpu_memory_threshold_mb = Float(256, config=True, help="GPU memory in use (MiB) that counts as GPU work.")

    # ---- Docker ---------------------------------------------------------------------------
    docker_notices = Bool(
        True, config=True,
        help="Use the local Docker engine for container labels (profile, unit) and the notice file.",
    )
    hub_id = Unicode("gpuhub", config=True, help="The spawner's gpu_hub_id (env GPUHUB_HUB_ID).")
    notice_path = Unicode(
        NOTICE_PATH, config=True,
        help="""The notice file, inside the user's container.  Servers on other swarm nodes get
        theirs from their node's agent, at the agent's own path (this default).""",
    )
    spawner = Unicode(
        "docker", config=True,
        help="""'swarm' (gpuhub.yaml's hub.spawner, env GPUHUB_SPAWNER): the engine is the swarm
        manager's; servers on other nodes are found from the swarm's tasks and asked through
        their node's agent (agent_url), with the agents' token (GPUHUB_GPU_AGENT_TOKEN_FILE).""",
    )
    docker_host = Unicode(
        config=True,
        help="The engine's URL, as the hub's (env GPUHUB_DOCKER_HOST; empty: DOCKER_HOST or the local socket).",
    )
    agent_url = Unicode(
        AGENT_URL, config=True,
        help="""On a swarm: a node agent's URL, from the node's swarm address ({addr}) or hostname
        ({hostname}).  Its agent serves the kernel probe and notice of servers on that node, and,
        when gpu_agent_urls is empty, the GPU activity of nodes labelled gpuhub.gpu=true.

            c.CullerApp.agent_url = "http://{hostname}:9469"
        """,
    )
    idle_without_probe = Bool(
        False, config=True,
        help="""Cull servers whose kernels cannot be asked on their idle signals alone.

        Kernels are asked from inside the server's container through the local Docker engine
        (or, on a swarm, the agent of the server's node), with the server's own token (never the
        culler's).  Servers whose container cannot be asked (--no-docker; a swarm node without
        an agent answering) have no kernel signal.  False (default):
        such servers are never culled for idleness (age and GPU-budget limits still apply).
        True: they are culled on hub activity, keep-alives and GPU work alone, so a long cell
        running in a closed tab is not seen.

            c.CullerApp.idle_without_probe = True
        """,
    )

    aliases = {
        "config": "CullerApp.config_file",
        "every": "CullerApp.every",
        "idle-cpu-timeout": "CullerApp.idle_cpu_timeout",
        "idle-gpu-timeout": "CullerApp.idle_gpu_timeout",
        "warn-seconds": "CullerApp.warn_seconds",
        "reclaim-idle-timeout": "CullerApp.reclaim_idle_timeout",
        "reclaim-after": "CullerApp.reclaim_after",
        "budget-warn-seconds": "CullerApp.budget_warn_seconds",
        "gpu-agent-url": "CullerApp.gpu_agent_urls",
        "concurrency": "CullerApp.concurrency",
        "usage-db-url": "CullerApp.usage_db_url",
        "url": "CullerApp.service_url",
        "hub-id": "CullerApp.hub_id",
    }
    flags = {
        "once": ({"CullerApp": {"once": True}}, "Run one pass and exit."),
        "dry-run": ({"CullerApp": {"dry_run": True}}, "Decide and log only."),
        "no-docker": ({"CullerApp": {"docker_notices": False}}, "Do not use the Docker engine."),
    }

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:  # gpuhub.yaml's culler timings win over it (gpuhub.yaml says so)
            self.load_own_config_file(self.config_file, file_wins=CULLER_TIMINGS)

    def settings(self) -> core.Settings:
        return core.Settings(
            idle_cpu_seconds=self.idle_cpu_timeout,
            idle_gpu_seconds=self.idle_gpu_timeout,
            profile_idle_seconds={str(k): float(v) for k, v in self.profile_idle_timeouts.items()},
            warn_seconds=self.warn_seconds,
            quota_defaults=self.checked_quota_defaults(),
            gpu_thresholds=GPUThresholds(self.gpu_utilization_threshold, int(self.gpu_memory_threshold_mb * 1024**2)),
            idle_without_probe=self.idle_without_probe,
            dry_run=self.dry_run,
            reclaim_idle_seconds=self.reclaim_idle_timeout,
            reclaim_after_seconds=self.reclaim_after,
            budget_warn_seconds=self.budget_warn_seconds,
        )

    def context(self) -> core.Context:
        if not self.api_token:
            raise SystemExit("gpuhub-culler: no hub token; run it as a hub service (JUPYTERHUB_API_TOKEN)")
        hub = self.hub_client(concurrency=self.concurrency, page_size=self.page_size)
        ledger = UsageLedger(self.usage_db_url) if self.usage_db_url else None
        if ledger is None:
            log.warning("No usage_db_url: GPU-hour budgets, warnings in hub pages and keep-alives are off")
        if not self.docker_notices:
            log.warning("No Docker engine (--no-docker): no notice files and no kernel probes; servers are %s",
                        "culled on hub, keep-alive and GPU signals alone (idle_without_probe)"
                        if self.idle_without_probe else "never culled for idleness (set idle_without_probe)")
        swarm = self.spawner == "swarm" and self.docker_notices
        if not self.gpu_agent_urls and not swarm:
            log.warning("No GPU agent configured: GPU work is not a signal (hub and kernel activity only)")
        containers = None
        if self.docker_notices:
            containers = Containers(
                self.hub_id, self.notice_path, docker_host=self.docker_host,
                swarm=SwarmServers(self.hub_id, self.agent_url) if swarm else None, agents=AgentCalls(hub.http),
            )
        return core.Context(
            http=hub.http,
            hub=hub,
            metrics=CullerMetrics(),
            agent_urls=list(self.gpu_agent_urls),
            containers=containers,
            ledger=ledger,
            notices=NoticeStore(self.usage_db_url) if self.usage_db_url else None,
        )

    def web_app(self, ctx: core.Context, settings: core.Settings) -> web.Application:
        prefix = self.url_prefix
        return web.Application(
            [
                (prefix + "metrics", MetricsHandler),
                (prefix + "api/pass", PassHandler),
                (prefix + "api/keepalive", KeepaliveHandler),
            ],
            ctx=ctx,
            culler_settings=settings,
            hub_auth=self.hub_auth(cache_max_age=5),
            metrics_scope=self.metrics_scope,
            metrics_registry=ctx.metrics.registry,
        )

    async def _timed(self, ctx: core.Context, settings: core.Settings) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await core.run_once(ctx, settings)
            except Exception as e:  # noqa: BLE001 - the next pass tries again
                log.warning("Culler pass failed: %s", e)

    async def serve(self) -> None:
        settings = self.settings()
        self.ctx = ctx = self.context()
        self.listen(self.web_app(ctx, settings))
        log.info(
            "Culler listening on %s%s; pass every %ss, idle GPU %ss / CPU %ss, warning %ss, %d GPU agent(s)",
            self.service_url, self.prefix, self.every, self.idle_gpu_timeout, self.idle_cpu_timeout,
            self.warn_seconds, len(self.gpu_agent_urls),
        )
        if self.every > 0:
            await self._timed(ctx, settings)
        else:
            await asyncio.Event().wait()  # passes only when triggered

    async def once_pass(self) -> list[dict[str, Any]]:
        """One pass (``--once``), its decisions."""
        settings = self.settings()
        self.ctx = self.context()
        return await core.run_once(self.ctx, settings)

    def cleanup(self) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None and ctx.ledger is not None:
            ctx.ledger.dispose()

    def start(self) -> None:
        if not self.once:
            super().start()
            return
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        try:
            results = asyncio.run(self.once_pass())
        finally:
            self.cleanup()
        print(json.dumps({"servers": results}, indent=1))


main = CullerApp.main
