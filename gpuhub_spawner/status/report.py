"""``gpuhub status``: what the operator's report holds, and how it reads (pure, no I/O).

The collector (:mod:`gpuhub_spawner.status.collect`) gathers raw answers from the Hub API,
the services' metrics and the Docker API; this module turns them into one report (a plain
dict, the ``--json`` output) and its text form.  A part that could not be read is a line
saying so and what to do, never a traceback and never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuhub_spawner.core.cluster import ClusterView, pool_of_kind

#: the spawner's progress line for a spawn waiting in line (hub/mixin.py _start_reserving)
_IN_LINE = re.compile(r"All (?P<label>.+?) units are in use\. You are #(?P<pos>\d+) of (?P<total>\d+) in line")
_RESERVING = re.compile(r"Reserving an? (?P<label>.+?)…")


@dataclass
class Waiting:
    """A spawn not yet given what it asked for: in line (position known) or still starting."""

    user: str
    server: str
    wants: str = ""  # the pool's label as the user is told it
    position: int | None = None
    of: int | None = None
    last_message: str = ""


def waiting_from_progress(user: str, server: str, messages: Iterable[str]) -> Waiting:
    """The latest place in line (and what for) that a pending spawn's progress stream said."""
    entry = Waiting(user, server)
    for message in messages:
        entry.last_message = message
        reserving = _RESERVING.match(message)
        if reserving:
            entry.wants = reserving["label"]
        in_line = _IN_LINE.match(message)
        if in_line:
            entry.wants = in_line["label"]
            entry.position, entry.of = int(in_line["pos"]), int(in_line["total"])
        elif entry.position is not None and not message.startswith("All "):
            entry.position = entry.of = None  # moved on past the line (assigned, starting)
    return entry


def queue_report(waiting: Iterable[Waiting]) -> list[dict[str, Any]]:
    """Spawns in line first, by what they wait for and position; then other pending starts."""
    rows = sorted(waiting, key=lambda w: (w.position is None, w.wants, w.position or 0, w.user))
    return [
        {"user": w.user, "server": w.server, "wants": w.wants, "position": w.position, "of": w.of,
         "state": "in line" if w.position is not None else "starting", "message": w.last_message}
        for w in rows
    ]


def nodes_report(view: ClusterView) -> list[dict[str, Any]]:
    """Each swarm node: state, availability (active/pause/drain), and units per pool (all, free)."""
    out = []
    for node in sorted(view.nodes.values(), key=lambda n: n.hostname):
        pools: dict[str, dict[str, int]] = {}
        for unit in view.units:
            if view.unit_node.get(unit.id) == node.id:
                counts = pools.setdefault(unit.pool, {"units": 0, "free": 0})
                counts["units"] += 1
                counts["free"] += int(node.schedulable and unit.id not in view.held)
        for kind, (_gpu, node_id, slots, taken) in view.shared.items():
            if node_id == node.id:
                counts = pools.setdefault(pool_of_kind(kind) or kind, {"units": 0, "free": 0})
                counts["units"] += slots
                counts["free"] += max(0, slots - taken) if node.schedulable else 0
        out.append({"name": node.hostname, "role": node.role, "state": node.state,
                    "availability": node.availability, "pools": dict(sorted(pools.items()))})
    return out


def pools_from_view(view: ClusterView) -> dict[str, dict[str, int]]:
    pools: dict[str, dict[str, int]] = {}
    for node in nodes_report(view):
        for pool, counts in node["pools"].items():
            total = pools.setdefault(pool, {"units": 0, "free": 0})
            total["units"] += counts["units"]
            total["free"] += counts["free"]
    return dict(sorted(pools.items()))


def pools_from_metrics(samples: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, int]]:
    """Pools from the hub exporter's ``gpuhub_pool_capacity_units`` / ``_free_units`` (by pool)."""
    capacity = samples.get("gpuhub_pool_capacity_units") or {}
    free = samples.get("gpuhub_pool_free_units") or {}
    return {pool: {"units": int(capacity[pool]), "free": int(free.get(pool, 0))} for pool in sorted(capacity)}


def stack_service_report(service: Mapping[str, Any], tasks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One stack service: replicas running of those wanted, and why the last task stopped."""
    spec = service.get("Spec") or {}
    mode = spec.get("Mode") or {}
    wanted = (mode.get("Replicated") or {}).get("Replicas") if "Replicated" in mode else None
    live = [t for t in tasks if t.get("DesiredState") == "running"]
    running = sum(1 for t in live if (t.get("Status") or {}).get("State") == "running")
    problem = ""
    for task in sorted(tasks, key=lambda t: t.get("UpdatedAt", ""), reverse=True):
        status = task.get("Status") or {}
        if status.get("State") in {"failed", "rejected"}:
            problem = status.get("Err") or status.get("Message") or status.get("State", "")
            break
    wanted = len(live) if wanted is None else int(wanted)
    return {"name": spec.get("Name", service.get("ID", "")), "running": running, "wanted": wanted,
            "ok": running >= wanted and wanted > 0, "last_error": problem if running < wanted else ""}


@dataclass
class Report:
    """Everything ``gpuhub status`` shows; ``problems`` are the parts it could not read."""

    hub: dict[str, Any] = field(default_factory=dict)
    services: list[dict[str, Any]] = field(default_factory=list)
    stack: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] | None = None  # None: not a swarm
    pools: dict[str, dict[str, int]] = field(default_factory=dict)
    queue_lengths: dict[str, int] = field(default_factory=dict)
    queue: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def healthy(self) -> bool:
        return (bool(self.hub.get("answering")) and all(s["answering"] for s in self.services)
                and all(s["ok"] for s in self.stack) and not self.problems)


def format_text(report: Report) -> str:
    """The report as the operator reads it in a terminal."""
    lines = []
    hub = report.hub
    lines.append(f"hub: {'answering' if hub.get('answering') else 'NOT ANSWERING'}"
                 + (f" (JupyterHub {hub['version']})" if hub.get("version") else "")
                 + (f" at {hub['url']}" if hub.get("url") else ""))
    lines.append("services:")
    lines += [f"  {s['name']}: {'answering' if s['answering'] else 'NOT ANSWERING'}"
              + (f" ({s['detail']})" if s.get("detail") else "") for s in report.services] or ["  (none)"]
    if report.stack:
        lines.append("stack:")
        lines += [f"  {s['name']}: {s['running']}/{s['wanted']} running"
                  + ("" if s["ok"] else " !!") + (f" (last error: {s['last_error']})" if s["last_error"] else "")
                  for s in report.stack]
    if report.nodes is not None:
        lines.append("nodes:")
        for node in report.nodes:
            units = ", ".join(f"{c['free']}/{c['units']} {p} free" for p, c in node["pools"].items()) or "no GPU units"
            lines.append(f"  {node['name']} ({node['role']}): {node['state']}, {node['availability']}; {units}")
    lines.append("pools:")
    pools = sorted(set(report.pools) | set(report.queue_lengths))
    lines += [f"  {p}: {report.pools.get(p, {}).get('free', '?')} free of {report.pools.get(p, {}).get('units', '?')}"
              f", {report.queue_lengths.get(p, 0)} in line" for p in pools] or ["  (no GPU pools seen)"]
    lines.append("queue:")
    for w in report.queue:
        where = f"#{w['position']} of {w['of']} for {w['wants']}" if w["position"] else f"starting ({w['message']})"
        lines.append(f"  {w['user']}{'/' + w['server'] if w['server'] else ''}: {where}")
    if not report.queue:
        lines.append("  (nobody waiting)")
    if report.problems:
        lines.append("could not read:")
        lines += [f"  - {p}" for p in report.problems]
    return "\n".join(lines) + "\n"
