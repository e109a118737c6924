"""One pass of the culler: gather signals for every running server, decide, act, count.

:func:`run_once` is what the service's timer and its ``api/pass`` trigger call, and what
tests and the benchmark call directly.  Users arrive page by page and each server is handled
in its own task as soon as its page arrives; requests are bounded by one semaphore
(:class:`~hub_services.common.hubapi.BoundedHTTP`).  A failure with one server is logged, counted and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from gpuhub_spawner.core.quotas import QuotaError, QuotaPolicy, budget_since, budget_view, resolve_policy
from gpuhub_spawner.storage.ledger import UsageLedger
from gpuhub_spawner.storage.notices import NoticeStore
from hub_services.common.hubapi import BoundedHTTP, HubAPIError, HubClient
from hub_services.common.hubtime import parse_time
from hub_services.culler import decide as d
from hub_services.culler import reclaim
from hub_services.culler.metrics import CullerMetrics
from hub_services.culler.notices import KEEPALIVE_COMMAND, notice_card, notice_text
from hub_services.culler.probe import parse_probe
from hub_services.culler.signals import AgentView, ContainerInfo, Containers, read_agents

log = logging.getLogger(__name__)
#: seconds a kernel probe inside a container may take (the script itself stops after 10)
PROBE_WAIT = 20.0


@dataclass
class Settings:
    """What a pass needs to know; the service fills it from its config."""

    idle_cpu_seconds: float = 3600
    idle_gpu_seconds: float = 1200
    profile_idle_seconds: dict[str, float] = field(default_factory=dict)
    warn_seconds: float = 300
    quota_defaults: dict[str, Any] = field(default_factory=dict)
    gpu_thresholds: d.GPUThresholds = d.GPUThresholds()
    keepalive_command: str = KEEPALIVE_COMMAND
    idle_without_probe: bool = False
    dry_run: bool = False
    #: idle timeout of a server over its group's share while the line wants units back (reclaim.py)
    reclaim_idle_seconds: float = 600
    #: how long a reservation's member waits before a lent unit is taken back, busy or not
    reclaim_after_seconds: float = 600
    #: a GPU-hour budget running out is announced this long before (when above warn_seconds)
    budget_warn_seconds: float = 1800


@dataclass
class Context:
    """Long-lived clients and state of the service (kept between passes)."""

    http: BoundedHTTP  # the hub client's: agents and probes share its bound
    hub: HubClient
    metrics: CullerMetrics
    agent_urls: list[str] = field(default_factory=list)
    containers: Containers | None = None
    ledger: UsageLedger | None = None
    notices: NoticeStore | None = None
    gpu_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    agent_seen: list[str] = field(default_factory=list)  # the GPU agents the swarm gave last
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class PassState:
    """What one pass reads once and shares between its servers."""

    now: float
    agents: AgentView | None
    containers: dict[tuple[str, str], ContainerInfo] | None
    gpu_holders: set[tuple[str, str]]
    warnings: dict[tuple[str, str], Any]
    keepalives: dict[tuple[str, str], float]
    overrides: dict[str, dict[str, Any]]
    usage: dict[str, dict[str, float]] = field(default_factory=dict)
    groups: dict[str, asyncio.Future] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    reclaims: reclaim.Reclaims = field(default_factory=reclaim.Reclaims)


async def _safely(ctx: Context, stage: str, coro: Any, default: Any) -> Any:
    try:
        return await coro
    except Exception as e:  # noqa: BLE001 - one failing source must not stop the pass
        log.warning("Culler pass: could not read %s: %s", stage, e)
        ctx.metrics.errors.labels(stage).inc()
        return default


async def _pass_state(ctx: Context) -> PassState:
    now = time.time()
    agents = containers = None
    tasks = {}
    discover = not ctx.agent_urls and ctx.containers is not None and ctx.containers.swarm is not None
    if ctx.agent_urls:
        tasks["agent"] = read_agents(ctx.http, ctx.agent_urls)
    elif discover:
        tasks["agent"] = _swarm_agents(ctx)
    if ctx.containers is not None:
        tasks["docker"] = ctx.containers.running()
    if ctx.notices is not None:
        tasks["warnings"] = asyncio.to_thread(ctx.notices.warnings)
        tasks["keepalives"] = asyncio.to_thread(ctx.notices.keepalives)
    if ctx.ledger is not None:
        tasks["overrides"] = asyncio.to_thread(ctx.ledger.all_overrides)
        tasks["allocations"] = asyncio.to_thread(ctx.ledger.open_allocations)
    stages = {"agent": "agent", "docker": "docker"}
    results = await asyncio.gather(
        *(_safely(ctx, stages.get(k, "database"), coro, None) for k, coro in tasks.items())
    )
    got = dict(zip(tasks, results))
    agents = got.get("agent")
    if agents is None and (ctx.agent_urls or discover):  # fail closed: GPU work unknown, never idle
        agents = _all_failed(ctx.agent_urls or ["the swarm's GPU node agents"])
    containers = got.get("docker")
    holders = {(a["user"], a["server"]) for a in got.get("allocations") or []}
    if containers:
        holders |= {key for key, info in containers.items() if info.unit}
    ctx.metrics.agents_down.set(len(agents.failed) if agents else 0)
    return PassState(
        now=now,
        agents=agents,
        containers=containers,
        gpu_holders=holders,
        warnings=got.get("warnings") or {},
        keepalives=got.get("keepalives") or {},
        overrides=got.get("overrides") or {},
    )


def _all_failed(urls: list[str]) -> AgentView:
    return AgentView({}, list(urls))


async def _swarm_agents(ctx: Context) -> AgentView:
    """GPU activity from the agents of the swarm's GPU nodes (``gpu_agent_urls`` left empty)."""
    urls = await ctx.containers.gpu_agent_urls()
    if set(urls) != set(ctx.agent_seen):
        log.info("GPU agents found on the swarm: %s", ", ".join(urls) or "none (no ready node labelled gpuhub.gpu=true)")
        ctx.agent_seen = list(urls)
    view = await read_agents(ctx.http, urls)
    view.discovered = True
    return view


async def _policy(ctx: Context, settings: Settings, state: PassState, user: dict[str, Any]) -> QuotaPolicy | None:
    groups = []
    for name in user.get("groups") or []:
        if name not in state.groups:
            state.groups[name] = asyncio.ensure_future(ctx.hub.group_properties(name))
        groups.append(await state.groups[name])
    try:
        return resolve_policy(settings.quota_defaults, groups, state.overrides.get(user["name"]))
    except QuotaError as e:
        # fail closed: a broken group property or override must not lift the defaults' limits
        log.warning("Quota of %s cannot be read (%s): the default quota's age and budget limits apply",
                    user["name"], e)
    try:
        return resolve_policy(settings.quota_defaults, [], None)
    except QuotaError as e:  # checked at start, so only a defaults file edited since
        log.error("The default quota cannot be read either (%s): no age or budget limit for %s", e, user["name"])
        return None


async def _gpu_left(ctx: Context, state: PassState, user: str, policy: QuotaPolicy) -> float | None:
    if policy.gpu_hours_per_period is None or ctx.ledger is None:
        return None
    now = datetime.fromtimestamp(state.now, timezone.utc)
    if policy.period not in state.usage:
        since = budget_since(policy, now)
        state.usage[policy.period] = await asyncio.to_thread(ctx.ledger.usage_by_user, since, now)
    return budget_view(policy, state.usage[policy.period].get(user, 0.0), now).left_seconds


def _gpu_signal(state: PassState, key: tuple[str, str], holds_gpu: bool,
                info: ContainerInfo | None = None) -> tuple[d.GPUReading | None, bool]:
    if not holds_gpu or state.agents is None:
        return None, False
    reading = state.agents.readings.get(key)
    if reading is None and state.agents.failed:
        if state.agents.discovered and info is not None and info.agent and info.agent not in state.agents.failed:
            return None, False  # its own node's agent answered (swarm): another node's failure is not its
        return None, True  # its agent may be the one that failed: never cull on missing data
    return reading, False


async def handle_server(
    ctx: Context, settings: Settings, state: PassState, user: dict[str, Any], name: str, server: dict[str, Any]
) -> dict[str, Any]:
    """Decide about one server and act on the decision; returns what was done."""
    key = (user["name"], name)
    state.seen.add(key)
    info = (state.containers or {}).get(key)
    holds_gpu = key in state.gpu_holders
    profile = info.profile if info else str((server.get("user_options") or {}).get("profile") or "")
    started = parse_time(server.get("started")) or state.now
    policy = await _policy(ctx, settings, state, user)
    gpu_servers = sum(1 for k in state.gpu_holders if k[0] == user["name"])
    limits = d.Limits(
        idle_seconds=d.idle_timeout(
            profile, holds_gpu, settings.profile_idle_seconds, settings.idle_gpu_seconds, settings.idle_cpu_seconds
        ),
        max_age_seconds=policy.max_session_hours * 3600 if policy and policy.max_session_hours else None,
        gpu_seconds_left=await _gpu_left(ctx, state, user["name"], policy) if policy and holds_gpu else None,
        gpu_servers_of_user=max(1, gpu_servers),
        reclaim_idle_seconds=settings.reclaim_idle_seconds if key in state.reclaims.over_share else None,
        reclaim_at=state.now if key in state.reclaims.taken_back else None,
        budget_lead_seconds=settings.budget_warn_seconds,
    )
    reading, unknown = _gpu_signal(state, key, holds_gpu, info)
    if reading is not None and d.gpu_works(reading, settings.gpu_thresholds):
        ctx.gpu_seen[key] = state.now
    signals = d.Signals(
        started=started,
        hub_activity=parse_time(server.get("last_activity")),
        keepalive=state.keepalives.get(key),
        holds_gpu=holds_gpu,
        gpu=reading,
        gpu_unknown=unknown,
        gpu_active=ctx.gpu_seen.get(key),
        pending=bool(server.get("pending")) or not server.get("ready", True),
    )
    row = state.warnings.get(key)
    warning = d.CullWarning(row.reason, row.warned_at, row.cull_at) if row is not None else None

    def decide_now(sig: d.Signals) -> d.Decision:
        return d.decide(sig, limits, state.now, settings.warn_seconds, warning, settings.gpu_thresholds)

    decision = decide_now(signals)
    if decision.action in ("warn", "cull"):
        # only now is the server itself asked: kernels can only add activity
        kernels, activity = await _probe(ctx, settings, key, info)
        signals = d.Signals(**{**signals.__dict__, "kernels": kernels, "server_activity": activity})
        decision = decide_now(signals)
    await act(ctx, settings, state, key, info, decision, row)
    return {"user": key[0], "server": key[1], "action": decision.action, "reason": decision.reason,
            "cull_at": decision.cull_at, "profile": profile, "gpu": holds_gpu, "detail": decision.detail}


async def _probe(
    ctx: Context, settings: Settings, key: tuple[str, str], info: ContainerInfo | None
) -> tuple[tuple[d.KernelReading, ...] | None, float | None]:
    """Kernels and own activity of a server, asked from inside its container with its own token.

    A swarm task on another node is asked through that node's agent (:mod:`.swarm`).  No
    container found (``--no-docker``, a swarm not read): no kernel signal; the server is then
    kept (``probe-failed``) unless ``idle_without_probe``.  The culler's own token is never
    sent to a server.
    """
    name = "/".join(k for k in key if k)
    if ctx.containers is None or info is None:
        if settings.idle_without_probe:
            log.debug("%s: no container on this engine to ask for kernels; deciding on hub, keep-alive "
                     "and GPU signals (idle_without_probe)", name)
            return (), None
        log.info("%s: no container on this engine to ask for kernels (--no-docker, or the swarm not read): kept "
                 "as possibly active; set idle_without_probe to cull on the other signals", name)
        return None, None
    try:
        if info.agent:  # an HTTP request to its node's agent: bounded by the client itself
            output = await asyncio.wait_for(ctx.containers.probe_server(info, key), PROBE_WAIT)
        else:
            async with ctx.http.semaphore:
                output = await asyncio.wait_for(ctx.containers.probe_server(info, key), PROBE_WAIT)
    except Exception as e:  # noqa: BLE001 - engine down, container gone, timeout: no answer
        log.warning("Kernel probe of %s failed: %s", name, e)
        output = None
    kernels, activity = parse_probe(output)
    if kernels is None:
        ctx.metrics.errors.labels("server").inc()
        log.warning("Could not read the kernels of %s from inside its container; kept as possibly active", name)
    return kernels, activity


async def act(
    ctx: Context, settings: Settings, state: PassState, key: tuple[str, str], info: ContainerInfo | None,
    decision: d.Decision, row: Any,
) -> None:
    user, server = key
    name = f"{user}/{server}" if server else user
    ctx.metrics.decisions.labels(decision.action, decision.reason).inc()
    if decision.action == "keep":
        log.debug("Keep %s: %s", name, decision.reason)
        return
    if settings.dry_run:
        log.info("Dry run: would %s %s (%s)", decision.action, name, decision.reason)
        return
    if decision.action == "cancel":
        log.info("Warning for %s lifted: %s", name, decision.detail)
        await _clear_notice(ctx, key, info)
        return
    if decision.action == "warn":
        new = row is None or row.reason != decision.reason or abs(row.cull_at - (decision.cull_at or 0)) > 1
        if not new:
            log.debug("Still warning %s: %s at %.0f", name, decision.reason, decision.cull_at)
            return
        message = d.describe(decision.reason, decision.cull_at or state.now)
        log.info("Warning %s: %s cull in %.0f s (%s)", name, decision.reason,
                 (decision.cull_at or state.now) - state.now, message)
        if row is None or row.reason != decision.reason:
            ctx.metrics.warnings.labels(decision.reason).inc()
        if ctx.notices is not None:
            await _step(ctx, "database", asyncio.to_thread(
                ctx.notices.set_warning, user, server, decision.reason,
                row.warned_at if row is not None and row.reason == decision.reason else state.now,
                decision.cull_at or state.now, message,
            ))
        if ctx.containers is not None and info is not None:
            cull_at = decision.cull_at or state.now
            text = notice_text(user, server, message, cull_at, settings.keepalive_command)
            card = notice_card(decision.reason, message, cull_at)
            ok = await _step(ctx, "notice", ctx.containers.notice(info, text, card))
            if ok is False:
                ctx.metrics.errors.labels("notice").inc()
                log.warning("Could not write the cull notice into %s's server", name)
        return
    # cull
    log.info("Culling %s: %s (last active %s)", name, decision.reason,
             datetime.fromtimestamp(decision.last_active, timezone.utc).isoformat() if decision.last_active else "never")
    code = await ctx.hub.stop_server(user, server)
    ctx.metrics.culls.labels(decision.reason).inc()
    if code == 202:
        log.info("%s is slow to stop; the hub goes on stopping it", name)
    if ctx.notices is not None:
        await _step(ctx, "database", asyncio.to_thread(ctx.notices.clear_warning, user, server))
        await _step(ctx, "database", asyncio.to_thread(ctx.notices.forget_keepalive, user, server))
    ctx.gpu_seen.pop(key, None)


async def _clear_notice(ctx: Context, key: tuple[str, str], info: ContainerInfo | None) -> None:
    if ctx.notices is not None:
        await _step(ctx, "database", asyncio.to_thread(ctx.notices.clear_warning, *key))
    if ctx.containers is not None and info is not None:
        await _step(ctx, "notice", ctx.containers.unnotice(info))


async def _step(ctx: Context, stage: str, coro: Any) -> Any:
    try:
        return await coro
    except Exception as e:  # noqa: BLE001 - a notice that fails must not stop the decision
        log.warning("Culler: %s step failed: %s", stage, e)
        ctx.metrics.errors.labels(stage).inc()
        return None


async def _handle_safely(ctx: Context, settings: Settings, state: PassState, user: dict, name: str,
                         server: dict) -> dict[str, Any]:
    try:
        return await handle_server(ctx, settings, state, user, name, server)
    except HubAPIError as e:
        stage, reason = "hub-api", "hub-api"
        log.warning("Culler: skipped %s/%s: %s", user.get("name"), name, e)
    except Exception:  # noqa: BLE001 - per-server failures are logged and skipped
        stage, reason = "internal", "internal"
        log.exception("Culler: skipped %s/%s after an error", user.get("name"), name)
    ctx.metrics.errors.labels(stage).inc()
    ctx.metrics.decisions.labels("error", reason).inc()
    return {"user": user.get("name"), "server": name, "action": "error", "reason": reason}


def _reclaims(state: PassState, users: list[dict[str, Any]], wants: dict[str, Any],
              settings: Settings) -> reclaim.Reclaims:
    """The GPU servers the lines want units back from (reclaim.py), from this pass's reads."""
    if not wants or not state.containers:
        return reclaim.Reclaims()
    servers = {}
    for user in users:
        for name, server in (user.get("servers") or {}).items():
            info = state.containers.get((user["name"], name))
            if info is not None and info.unit and info.pool:
                servers[(user["name"], name)] = (info.pool, parse_time(server.get("started")) or state.now)
    found = reclaim.plan(wants, servers, settings.reclaim_after_seconds)
    if found.taken_back:
        log.info("Taking lent units back for reservations from %s", ", ".join("/".join(k) for k in sorted(found.taken_back)))
    return found


async def run_once(ctx: Context, settings: Settings) -> list[dict[str, Any]]:
    """One pass over every running server; returns one record per server.

    Passes never overlap (a trigger during a timed pass waits for it).
    """
    async with ctx.lock:
        started = time.monotonic()
        try:
            results = await _run(ctx, settings)
        except Exception:
            ctx.metrics.passes.labels("failed").inc()
            raise
        ctx.metrics.passes.labels("ok").inc()
        ctx.metrics.duration.observe(time.monotonic() - started)
        ctx.metrics.servers.set(len(results))
        return results


async def _run(ctx: Context, settings: Settings) -> list[dict[str, Any]]:
    state = await _pass_state(ctx)
    wants = asyncio.ensure_future(reclaim.read_wants(ctx.hub))
    users: list[dict[str, Any]] = []
    try:
        async for page in ctx.hub.pages("/users", state="active"):
            users.extend(page)
    except HubAPIError as e:
        ctx.metrics.errors.labels("hub-api").inc()
        log.warning("Culler pass: listing users failed: %s", e)
        wants.cancel()
        raise
    state.reclaims = _reclaims(state, users, await wants, settings)
    results = list(await asyncio.gather(*(
        _handle_safely(ctx, settings, state, user, name, server)
        for user in users for name, server in (user.get("servers") or {}).items()
    )))
    # forget warnings, keep-alives and GPU times of servers that are gone (stopped by their users)
    for key in set(state.warnings) - state.seen:
        if ctx.notices is not None:
            await _step(ctx, "database", asyncio.to_thread(ctx.notices.clear_warning, *key))
    for key in set(state.keepalives) - state.seen:
        if ctx.notices is not None:
            await _step(ctx, "database", asyncio.to_thread(ctx.notices.forget_keepalive, *key))
    for key in set(ctx.gpu_seen) - state.seen:
        ctx.gpu_seen.pop(key, None)
    return results
