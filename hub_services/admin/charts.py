"""Pictures for admins: what the GPU Hub page draws from the usage ledger, as inline SVG.

No script and no chart library: the page renders with no internet (a workshop's network often
has none) and in any browser:

- **GPU units held over the day**, per pool: a step line of how many units were held at each
  moment since midnight (UTC), from the ledger's intervals;
- **GPU-hours by group** in the week so far: each user's GPU time counted in every group they
  are in (a user in no group under "(no group)");
- **people waiting in line over the day**, per pool, from the finished waits the hub records
  (a wait still under way shows once it ends), and how good the likely-wait ranges told in
  line were this week (:func:`estimate_quality`);
- **reservation use** today, per group and pool with a window: the units reserved at each moment
  beside the units the group's members held (:func:`reservation_use`).

Pure functions: the series from the intervals, and the SVG from the series.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Any

from gpuhub_spawner.core.fairshare import hours_label
from gpuhub_spawner.core.reservations import Reservation
from gpuhub_spawner.storage.ledger import Interval, WaitRecord, usage_seconds_by_user

NO_GROUP = "(no group)"
#: one colour per pool, in order (distinct in light and dark mode)
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass(frozen=True)
class Steps:
    """Units held in one pool: ``points`` (moment, count from that moment on), oldest first."""

    pool: str
    points: tuple[tuple[datetime, int], ...]

    @property
    def peak(self) -> int:
        return max((n for _t, n in self.points), default=0)


def held_over_time(intervals: Iterable[Interval], start: datetime, end: datetime) -> list[Steps]:
    """Per pool, the number of units held at every moment in [start, end]."""
    return count_over_time(((row.pool, row.started_at, row.ended_at) for row in intervals), start, end)


def waiting_over_time(waits: Iterable[WaitRecord], start: datetime, end: datetime) -> list[Steps]:
    """Per pool, the number of spawns waiting in line at every moment in [start, end]."""
    return count_over_time(((w.pool, w.joined_at, w.ended_at) for w in waits), start, end)


def count_over_time(spans: Iterable[tuple[str, datetime, datetime | None]], start: datetime,
                    end: datetime) -> list[Steps]:
    """Per pool, how many ``(pool, began, ended or None)`` spans cover each moment in
    [start, end]: the count changes only where a span begins or ends, so those are the points."""
    changes: dict[str, dict[datetime, int]] = {}
    for pool_name, began, ended in spans:
        began, ended = max(began, start), min(ended or end, end)
        if ended <= began:
            continue
        pool = changes.setdefault(pool_name or "?", {})
        pool[began] = pool.get(began, 0) + 1
        if ended < end:
            pool[ended] = pool.get(ended, 0) - 1
    series = []
    for pool in sorted(changes):
        held, points = 0, [(start, 0)]
        for moment in sorted(changes[pool]):
            held += changes[pool][moment]
            points.append((moment, held))
        points.append((end, held))
        series.append(Steps(pool, tuple(points)))
    return series


def hours_by_group(intervals: Iterable[Interval], groups_of: Mapping[str, Iterable[str]],
                   since: datetime, now: datetime) -> dict[str, float]:
    """GPU-hours per group in [since, now]: each user's counted in each of their groups."""
    totals: dict[str, float] = {}
    for user, seconds in usage_seconds_by_user(intervals, since, now).items():
        for group in sorted(set(groups_of.get(user) or ())) or [NO_GROUP]:
            totals[group] = totals.get(group, 0.0) + seconds / 3600
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def estimate_quality(waits: Iterable[WaitRecord]) -> dict[str, Any]:
    """How the likely-wait ranges told in line compared with the waits that followed (waits
    cancelled by their owner are left out: how long they would have waited is not known).  A wait
    inside its range misses by 0; outside, by its distance to the nearer end."""
    done = [w for w in waits if w.outcome != "cancelled"]
    ranged = [w for w in done if w.told_low is not None]
    misses = []
    for w in ranged:
        waited = (w.ended_at - w.joined_at).total_seconds()
        high = w.told_high if w.told_high is not None else float("inf")
        misses.append(max(0.0, w.told_low - waited, waited - high))
    outside = sorted(m for m in misses if m > 0)
    return {
        "waits": len(done),
        "no_estimate": len(done) - len(ranged),
        "told_a_range": len(ranged),
        "inside": len(ranged) - len(outside),
        "median_miss_s": outside[len(outside) // 2] if outside else None,
    }


# ---- drawing -------------------------------------------------------------------------------

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 240, 44, 28, 12


def _svg(body: list[str], label: str, height: int = HEIGHT) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label)}" '
            f'viewBox="0 0 {WIDTH} {height}" width="100%" style="max-width:{WIDTH}px" '
            f'font-family="sans-serif" font-size="11">' + "".join(body) + "</svg>")


def steps_svg(series: list[Steps], start: datetime, end: datetime, label: str, counted: str = "held",
              empty: str = "No GPU unit was held in this time.") -> str:
    """A step line per pool, the hours along the bottom, the count (of units ``counted``, e.g.
    "held") up the side, a legend; ``empty``: what an empty picture says."""
    span = max((end - start).total_seconds(), 1.0)
    top = max([s.peak for s in series] + [1])
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - BOTTOM - TOP

    def x(t: datetime) -> float:
        return LEFT + plot_w * (t - start).total_seconds() / span

    def y(n: float) -> float:
        return TOP + plot_h * (1 - n / top)

    body = [f'<line x1="{LEFT}" y1="{y(0):.1f}" x2="{WIDTH - 10}" y2="{y(0):.1f}" stroke="currentColor"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y(0):.1f}" stroke="currentColor"/>']
    for n in sorted({0, top // 2, top}):
        body.append(f'<text x="{LEFT - 6}" y="{y(n) + 4:.1f}" text-anchor="end" fill="currentColor">{n}</text>')
    hour = start.replace(minute=0, second=0, microsecond=0)
    every = max(1, int(span // 3600 // 8) or 1)
    while hour <= end:
        if hour >= start and hour.hour % every == 0:
            body.append(f'<text x="{x(hour):.1f}" y="{HEIGHT - 8}" text-anchor="middle" '
                        f'fill="currentColor">{hour:%H:%M}</text>')
        hour += timedelta(hours=1)
    for i, steps in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        path, last = [], None
        for moment, held in steps.points:
            if last is not None:
                path.append(f"{x(moment):.1f},{y(last):.1f}")
            path.append(f"{x(moment):.1f},{y(held):.1f}")
            last = held
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(path)}">'
                    f"<title>{escape(steps.pool)}: at most {steps.peak} {escape(counted)}</title></polyline>")
        body.append(f'<text x="{LEFT + 8 + 150 * i}" y="{TOP + 10}" fill="{colour}">'
                    f"■ {escape(steps.pool)} (peak {steps.peak})</text>")
    if not series:
        body.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="currentColor">'
                    f"{escape(empty)}</text>")
    return _svg(body, label)


def bars_svg(values: Mapping[str, float], label: str) -> str:
    """One horizontal bar per key (GPU-hours), in the order given, with its value at the end."""
    row, name_w = 22, 160
    height = TOP + row * max(len(values), 1) + 8
    most = max(list(values.values()) + [1e-9])
    body = []
    for i, (name, value) in enumerate(values.items()):
        top = TOP + row * i
        length = (WIDTH - name_w - 130) * value / most  # room for the figure after it
        body.append(f'<text x="{name_w - 6}" y="{top + 14}" text-anchor="end" fill="currentColor">'
                    f"{escape(name)}</text>")
        body.append(f'<rect x="{name_w}" y="{top + 3}" width="{length:.1f}" height="{row - 6}" '
                    f'fill="{COLOURS[0]}"><title>{escape(name)}: {value:.2f} GPU-hours</title></rect>')
        body.append(f'<text x="{name_w + length + 6:.1f}" y="{top + 14}" fill="currentColor">'
                    f"{hours_label(value * 3600)}</text>")
    if not values:
        body.append(f'<text x="{WIDTH / 2}" y="{TOP + 14}" text-anchor="middle" fill="currentColor">'
                    "No GPU time was used in this time.</text>")
    return _svg(body, label, height)


# ---- reservation use -----------------------------------------------------------------------


def reservation_use(reserved: Mapping[str, Iterable[Reservation]], groups_of: Mapping[str, Iterable[str]],
                    intervals: Iterable[Interval], start: datetime, end: datetime) -> list[tuple[str, list[Steps]]]:
    """Per group and pool with a reservation window in [start, end]: the units reserved at each
    moment, and the units its members held in that pool (what they used of it, and beyond)."""
    intervals = list(intervals)
    out = []
    for group in sorted(reserved):
        by_pool: dict[str, list[tuple[str, datetime, datetime | None]]] = {}
        for r in reserved[group]:
            for began, ended in r.windows(start, end):
                by_pool.setdefault(r.pool, []).extend([(r.pool, began, ended)] * r.units)
        members = {user for user, groups in groups_of.items() if group in set(groups)}
        for pool in sorted(by_pool):
            kept = count_over_time(by_pool[pool], start, end)
            held = count_over_time(((pool, row.started_at, row.ended_at) for row in intervals
                                    if row.pool == pool and row.user in members), start, end)
            series = [Steps("reserved", s.points) for s in kept]
            series += [Steps("held by members", s.points) for s in held]
            if series:
                out.append((f"{group} — {pool}", series))
    return out
