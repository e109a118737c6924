"""What the admin service does, shared by its JSON API and its HTML forms (one code path)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpuhub_spawner.core.quotas import (
    FIELDS,
    QuotaError,
    budget_since,
    budget_view,
    resolve_policy,
    validate_quota_edit,
)
from gpuhub_spawner.core.reservations import PROPERTY as RESERVATIONS
from gpuhub_spawner.core.reservations import ReservationError, as_stored, parse_reservations
from gpuhub_spawner.core.shares import PROPERTY as SHARE
from gpuhub_spawner.core.shares import ShareError, parse_shares
from gpuhub_spawner.storage.ledger import UsageLedger, UserQuota
from hub_services.admin import charts as drawing
from hub_services.admin import promsource
from hub_services.admin.roster import USERNAME, parse_roster
from hub_services.common.hubapi import HubAPIError, HubClient, seg

log = logging.getLogger(__name__)


class AdminError(Exception):
    """A request that cannot be done, with the status and a message an admin can act on."""

    def __init__(self, status: int, message: str, field: str | None = None):
        self.status = status
        self.message = message
        self.field = field
        super().__init__(message)

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.message, **({"field": self.field} if self.field else {})}


@dataclass
class Context:
    """``hub`` reads with the service's own token; ``actor`` is the signed-in admin's own token.

    Every change to the hub (users, groups, servers) is made as the admin, with their token,
    so the service's role needs no write scopes: JupyterHub 6 has no scope to create users
    short of ``admin:users``, which would also let the service read every user's auth state.
    """

    hub: HubClient
    ledger: UsageLedger
    defaults: dict[str, Any]
    actor: HubClient | None = None
    #: Prometheus's URL: the charts' units held and people waiting come from it ("": the ledger)
    prometheus_url: str = ""

    def as_admin(self) -> HubClient:
        if self.actor is None:
            raise AdminError(403, "Only hub admins may use this service.")
        return self.actor


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(when: Any) -> Any:
    return when.isoformat() if isinstance(when, datetime) else when


def _jsonable(value: Any) -> Any:
    return sorted(value) if isinstance(value, frozenset) else value


def _hub_error(e: HubAPIError, what: str) -> AdminError:
    if e.status == 404:
        return AdminError(404, f"{what} does not exist")
    return AdminError(502, f"the hub refused: {e.message}")


def check_quota_body(body: Any) -> dict[str, Any]:
    """Validated quota fields (JSON-able), or a 400 naming the field."""
    try:
        parsed = validate_quota_edit(body)
    except QuotaError as e:
        raise AdminError(400, str(e), e.field) from None
    return {k: _jsonable(v) for k, v in parsed.items()}


def allocations(ctx: Context) -> list[dict[str, Any]]:
    return [
        {
            "user": a["user"],
            "server": a["server"],
            "unit": a["unit_id"],
            "pool": a["pool"],
            "node": a["node"],
            "since": _iso(a["started_at"]),
        }
        for a in ctx.ledger.open_allocations()
    ]


async def _group_props(ctx: Context) -> dict[str, dict[str, Any]]:
    try:
        groups = await ctx.hub.groups()
    except HubAPIError as e:
        raise _hub_error(e, "groups") from None
    return {g["name"]: g.get("properties") or {} for g in groups}


async def usage(ctx: Context, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per user: GPU-seconds used this period, budget left, groups, running servers."""
    now = now or utcnow()
    try:
        users = await ctx.hub.users()
    except HubAPIError as e:
        raise _hub_error(e, "users") from None
    props = await _group_props(ctx)
    by_period: dict[str, dict[str, float]] = {}
    rows = []
    for user in users:
        name, groups = user["name"], sorted(user.get("groups") or [])
        row: dict[str, Any] = {
            "user": name,
            "groups": groups,
            "admin": bool(user.get("admin")),
            "servers": sorted((user.get("servers") or {}).keys()),
        }
        try:
            policy = resolve_policy(
                ctx.defaults, [props.get(g, {}) for g in groups], ctx.ledger.get_override(name)
            )
        except QuotaError as e:
            row.update(period=None, gpu_seconds=None, budget_left_seconds=None, error=str(e))
            rows.append(row)
            continue
        if policy.period not in by_period:
            by_period[policy.period] = ctx.ledger.usage_by_user(budget_since(policy, now), now)
        view = budget_view(policy, by_period[policy.period].get(name, 0.0), now)
        row.update(
            period=view.period,
            gpu_seconds=round(view.used_seconds, 1),
            budget_left_seconds=view.left_seconds,
        )
        rows.append(row)
    return rows


async def charts(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    """The charts page's pictures (SVG) from the ledger: units held and people waiting in line
    per pool since midnight UTC, GPU-hours by group since Monday, and how good this week's
    likely-wait ranges were."""
    now = now or utcnow()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = day - timedelta(days=day.weekday())
    intervals = await asyncio.to_thread(ctx.ledger.intervals_since, week)
    waits = await asyncio.to_thread(ctx.ledger.waits_since, week)
    try:
        users = await ctx.hub.users()
    except HubAPIError as e:
        raise _hub_error(e, "users") from None
    groups_of = {u["name"]: u.get("groups") or [] for u in users}
    reserved = _readable_reservations(await _group_props(ctx))
    held = drawing.held_over_time(intervals, day, now)  # it clips the week's intervals to the day
    by_group = drawing.hours_by_group(intervals, groups_of, week, now)
    waiting = drawing.waiting_over_time(waits, day, now)
    source, note = "ledger", ""
    if ctx.prometheus_url:
        try:
            held, waiting = await asyncio.gather(
                promsource.day_series(ctx.prometheus_url, promsource.HELD, day, now),
                promsource.day_series(ctx.prometheus_url, promsource.WAITING, day, now),
            )
            source = "prometheus"
        except promsource.PrometheusError as e:
            log.warning("Charts: Prometheus at %s did not answer (%s); drawing from the ledger", ctx.prometheus_url, e)
            note = (f"Prometheus at {ctx.prometheus_url} did not answer ({e}): units held and people waiting "
                    "are drawn from the usage ledger.")
    return {
        "source": source, "note": note, "prometheus_url": ctx.prometheus_url,
        "held_svg": drawing.steps_svg(held, day, now, f"GPU units held per pool since {day:%Y-%m-%d} 00:00 UTC"),
        "groups_svg": drawing.bars_svg(by_group, f"GPU-hours by group since {week:%Y-%m-%d}"),
        "day": f"{day:%Y-%m-%d}", "week": f"{week:%Y-%m-%d}",
        "waiting_svg": drawing.steps_svg(waiting, day, now, f"People waiting in line per pool since {day:%Y-%m-%d} 00:00 UTC",
                                         "waiting", "Nobody waited in line in this time." if source == "prometheus"
                                         else "Nobody's wait in line ended in this time."),
        "held": {s.pool: s.peak for s in held}, "by_group": {g: round(h, 3) for g, h in by_group.items()},
        "waiting": {s.pool: s.peak for s in waiting}, "estimates": drawing.estimate_quality(waits),
        "reservations": [
            {"title": title, "peaks": {s.pool: s.peak for s in series},
             "svg": drawing.steps_svg(series, day, now, f"Reservation use of {title} since {day:%Y-%m-%d} 00:00 UTC",
                                      "units", "")}
            for title, series in drawing.reservation_use(reserved, groups_of, intervals, day, now)
        ],
    }


def _readable_reservations(props: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    """group -> its reservations; one that cannot be read is left out (the Quotas tab says why)."""
    found = {}
    for group, p in props.items():
        try:
            found[group] = parse_reservations(p.get(RESERVATIONS), group)
        except ReservationError as e:
            log.warning("Charts: %s", e)
    return {g: rs for g, rs in found.items() if rs}


def overrides(ctx: Context) -> dict[str, dict[str, Any]]:
    with Session(ctx.ledger.engine) as session:
        names = list(session.scalars(select(UserQuota.user).order_by(UserQuota.user)))
    return {name: ctx.ledger.get_override(name) for name in names}


async def quotas(ctx: Context) -> dict[str, Any]:
    props = await _group_props(ctx)
    groups = {name: {k: v for k, v in p.items() if k in FIELDS} for name, p in sorted(props.items())}
    shares = {name: p[SHARE] for name, p in sorted(props.items()) if p.get(SHARE) is not None}
    reserved = {name: p[RESERVATIONS] for name, p in sorted(props.items()) if p.get(RESERVATIONS) is not None}
    return {"fields": list(FIELDS), "defaults": ctx.defaults, "groups": groups, "shares": shares,
            "reservations": reserved, "overrides": overrides(ctx)}


def check_share(value: Any) -> dict[str, Any] | None:
    """A group's ``gpu_share`` as stored (pool -> guaranteed, burst), None to remove it; 400 if unreadable."""
    try:
        shares = parse_shares(value, "this group")
    except ShareError as e:
        raise AdminError(400, str(e), SHARE) from None
    return {pool: {"guaranteed": s.guaranteed, "burst": s.burst} for pool, s in shares.items()} or None


def check_reservations(value: Any) -> list[dict[str, Any]] | None:
    """A group's ``gpu_reservations`` as stored, None to remove them; 400 if unreadable."""
    try:
        return as_stored(parse_reservations(value, "this group")) or None
    except ReservationError as e:
        raise AdminError(400, str(e), RESERVATIONS) from None


#: the group properties besides the quota fields that the Quotas page and API edit, and their checks
GROUP_ONLY = {SHARE: check_share, RESERVATIONS: check_reservations}


async def edit_group_quota(ctx: Context, group: str, body: Any) -> dict[str, Any]:
    """Merge the quota fields of ``body`` into the group's properties; a blank field is removed."""
    extra = {k: check(body[k]) for k, check in GROUP_ONLY.items() if k in body} if isinstance(body, Mapping) else {}
    values = check_quota_body({k: v for k, v in body.items() if k not in extra} if extra else body)
    values.update({k: v for k, v in extra.items() if v is not None})
    try:
        current = (await ctx.hub.group(group)).get("properties") or {}
        merged = {k: v for k, v in current.items() if k not in body}
        merged.update(values)
        result = await ctx.as_admin().request("PUT", f"/groups/{seg(group)}/properties", merged)
    except HubAPIError as e:
        raise _hub_error(e, f"group '{group[:60]}'") from None
    log.info("Quota of group %s set to %s", group, values)
    return {"group": group, "properties": (result or {}).get("properties", merged)}


async def _require_user(ctx: Context, user: str) -> None:
    try:
        await ctx.hub.user(user)
    except HubAPIError as e:
        raise _hub_error(e, f"user '{user[:60]}'") from None


async def set_override(ctx: Context, user: str, body: Any, by: str) -> dict[str, Any]:
    values = check_quota_body(body)
    await _require_user(ctx, user)
    ctx.ledger.set_override(user, values, by)
    return {"user": user, "override": values}


async def delete_override(ctx: Context, user: str) -> dict[str, Any]:
    ctx.ledger.delete_override(user)
    return {"user": user, "override": {}}


async def stop_server(ctx: Context, user: str, server: str | None) -> dict[str, Any]:
    path = f"/users/{seg(user)}/server" if not server else f"/users/{seg(user)}/servers/{seg(server)}"
    try:
        await ctx.as_admin().request("DELETE", path)
    except HubAPIError as e:
        what = f"server '{server}' of '{user}'" if server else f"user '{user}' or their server"
        raise (AdminError(400, e.message) if e.status == 400 else _hub_error(e, what[:120])) from None
    log.info("Stop of %s/%s requested", user, server or "")
    return {"user": user, "server": server or "", "stopping": True}


def check_name(value: str, what: str) -> str:
    if not value or len(value) > 255 or any(ord(ch) < 32 for ch in value):
        raise AdminError(400, f"'{value[:60]}' is not a valid {what}")
    return value


async def import_roster(ctx: Context, body: Any) -> dict[str, Any]:
    """Check every row, then apply the good ones; a row is applied fully or not at all."""
    if not isinstance(body, (str, list)):
        raise AdminError(400, "the roster is CSV text or a JSON list of rows", "roster")
    good, rejected = parse_roster(body)
    report = {"applied": [], "rejected": [r.as_dict() for r in rejected]}
    if not good:
        return report
    try:
        existing_users = {u["name"] for u in await ctx.hub.users()}
        existing_groups = set((await _group_props(ctx)).keys())
    except HubAPIError as e:
        raise _hub_error(e, "users") from None
    failed = await _create_groups(ctx, {r.group for r in good} - existing_groups)
    rows = [r for r in good if r.group not in failed or _reject(report, r, failed[r.group])]
    new_users = sorted({r.username for r in rows} - existing_users)
    if new_users:
        try:
            await ctx.as_admin().request("POST", "/users", {"usernames": new_users})
        except HubAPIError as e:
            for r in rows:
                _reject(report, r, f"could not create user: {e.message}")
            return report
    placed: set[str] = set()
    unplaced: set[str] = set()
    for group in sorted({r.group for r in rows}):
        members = [r for r in rows if r.group == group]
        try:
            await ctx.as_admin().request(
                "POST", f"/groups/{seg(group)}/users", {"users": sorted({r.username for r in members})}
            )
        except HubAPIError as e:
            for r in members:
                _reject(report, r, f"could not add to group: {e.message}")
            unplaced.update(r.username for r in members)
            continue
        placed.update(r.username for r in members)
        report["applied"] += [
            {"line": r.line, "github_username": r.username, "group": r.group} for r in members
        ]
    await _remove_users(ctx, (unplaced & set(new_users)) - placed)
    report["applied"].sort(key=lambda a: a["line"])
    report["rejected"].sort(key=lambda a: a["line"])
    log.info("Roster import: %d rows applied, %d rejected", len(report["applied"]), len(report["rejected"]))
    return report


def _reject(report: dict[str, Any], row: Any, reason: str) -> bool:
    report["rejected"].append({"line": row.line, "row": f"{row.username},{row.group}", "reason": reason})
    return False


async def _remove_users(ctx: Context, names: set[str]) -> None:
    """Undo users this import created for rows that could not be applied."""
    for name in sorted(names):
        try:
            await ctx.as_admin().request("DELETE", f"/users/{seg(name)}")
        except HubAPIError as e:
            log.warning("Could not remove user %s after a failed roster row: %s", name, e.message)


async def _create_groups(ctx: Context, names: set[str]) -> dict[str, str]:
    failed = {}
    for name in sorted(names):
        try:
            await ctx.as_admin().request("POST", f"/groups/{seg(name)}")
        except HubAPIError as e:
            if e.status != 409:
                failed[name] = f"could not create group: {e.message}"
    return failed


__all__ = ["USERNAME", "AdminError", "Context"]
