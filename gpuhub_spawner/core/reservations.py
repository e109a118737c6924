"""Reservations: units of a pool held for a group in a time window, once or every week (pure).

A group's ``gpu_reservations`` property (set like its quota and ``gpu_share``) lists them::

    [{"pool": "mig-1g.10gb", "units": 20, "weekly": "Tue 09:00-12:00", "tz": "Europe/Berlin"},
     {"pool": "gpu", "units": 2, "start": "2026-12-03T13:00", "end": "2026-12-03T17:00"}]

``weekly`` is a day (Mon..Sun) and a span of wall-clock time in ``tz`` (default UTC; a span may
pass midnight: ``Fri 22:00-02:00``); ``start``/``end`` are one window (ISO 8601, in ``tz`` when
they carry no offset).

Inside its window a reservation is a guarantee of ``units`` for the group (core/shares.py): for
the first ``grace`` seconds, free units up to those the group does not hold yet are *kept* from
everyone else; after that the unclaimed ones are *lent*: others may take them, and the group's
members still go first, taking any unit that comes free before anyone else in line.  Outside
its windows a reservation holds nothing.  A member waiting past the culler's ``reclaim_after``
gets a lent unit back: a borrower is warned and stopped (``hub_services/culler/reclaim.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gpuhub_spawner.core.shares import MOST, Share
from gpuhub_spawner.core.waits import Keep

PROPERTY = "gpu_reservations"
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WEEKLY = re.compile(r"^\s*(\w{3})\w*\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class ReservationError(ValueError):
    """A ``gpu_reservations`` value that cannot be used; says where, what and what is allowed."""


@dataclass(frozen=True)
class Reservation:
    pool: str
    units: int
    tz: str = "UTC"
    #: weekly: (day 0=Monday, start, end) of wall-clock time in ``tz``
    weekly: tuple[int, time, time] | None = None
    #: once: the window's ends (aware datetimes)
    start: datetime | None = None
    end: datetime | None = None

    def window(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The window ``now`` falls in (its start and end), or None."""
        if self.weekly is None:
            assert self.start is not None and self.end is not None
            return (self.start, self.end) if self.start <= now < self.end else None
        day, begins, ends = self.weekly
        local = now.astimezone(ZoneInfo(self.tz))
        for back in (0, 1):  # today's window, or yesterday's running past midnight
            date = local.date() - timedelta(days=back)
            if date.weekday() != day:
                continue
            start = datetime.combine(date, begins, ZoneInfo(self.tz))
            end = datetime.combine(date + timedelta(days=1 if ends <= begins else 0), ends, ZoneInfo(self.tz))
            if start <= now < end:
                return start, end
        return None

    def windows(self, since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
        """Its windows that overlap [since, until), oldest first (for the admin's chart)."""
        if self.weekly is None:
            assert self.start is not None and self.end is not None
            return [(self.start, self.end)] if self.start < until and self.end > since else []
        day, begins, ends = self.weekly
        zone = ZoneInfo(self.tz)
        first, last = since.astimezone(zone).date() - timedelta(days=1), until.astimezone(zone).date()
        found = []
        for n in range((last - first).days + 1):
            date = first + timedelta(days=n)
            if date.weekday() != day:
                continue
            start = datetime.combine(date, begins, zone)
            end = datetime.combine(date + timedelta(days=1 if ends <= begins else 0), ends, zone)
            if start < until and end > since:
                found.append((start, end))
        return found


def _zone(value: Any, where: str) -> str:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ReservationError(f"{where}: tz {value!r} is not a time zone such as Europe/Berlin or UTC") from None
    return str(value)


def _when(value: Any, tz: str, where: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise ReservationError(f"{where}: {what} {value!r} is not a date and time such as 2026-12-03T13:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo(tz))


def _weekly(value: Any, where: str) -> tuple[int, time, time]:
    m = _WEEKLY.match(str(value))
    day = m[1].title() if m else ""
    if not m or day not in DAYS or int(m[2]) > 23 or int(m[4]) > 23 or int(m[3]) > 59 or int(m[5]) > 59:
        raise ReservationError(f"{where}: weekly {value!r} is not a day and hours such as 'Tue 09:00-12:00'")
    begins, ends = time(int(m[2]), int(m[3])), time(int(m[4]), int(m[5]))
    if begins == ends:
        raise ReservationError(f"{where}: weekly {value!r} is an empty window")
    return DAYS.index(day), begins, ends


def _one(raw: Any, where: str) -> Reservation:
    if not isinstance(raw, Mapping):
        raise ReservationError(f"{where}: {raw!r:.80} is not a reservation such as {{\"pool\": ..., \"units\": ...}}")
    unknown = sorted(set(map(str, raw)) - {"pool", "units", "weekly", "start", "end", "tz"})
    if unknown:
        raise ReservationError(f"{where}: {', '.join(unknown)} is not pool, units, weekly, start, end or tz")
    pool, units = raw.get("pool"), raw.get("units")
    if not isinstance(pool, str) or not pool.strip():
        raise ReservationError(f"{where}: pool must name a pool, such as mig-1g.10gb")
    if isinstance(units, str) and units.strip().isdigit():
        units = int(units)
    if not isinstance(units, int) or isinstance(units, bool) or not 1 <= units <= MOST:
        raise ReservationError(f"{where}: units {units!r} is not a whole number from 1 to {MOST}")
    tz = _zone(raw.get("tz", "UTC"), where)
    if ("weekly" in raw) == ("start" in raw or "end" in raw):
        raise ReservationError(f"{where}: give either weekly, or start and end")
    if "weekly" in raw:
        return Reservation(pool.strip(), units, tz, weekly=_weekly(raw["weekly"], where))
    start = _when(raw.get("start"), tz, where, "start")
    end = _when(raw.get("end"), tz, where, "end")
    if end <= start:
        raise ReservationError(f"{where}: end {raw.get('end')!r} is not after start {raw.get('start')!r}")
    return Reservation(pool.strip(), units, tz, start=start, end=end)


def parse_reservations(raw: Any, where: str = "") -> list[Reservation]:
    """The reservations of a ``gpu_reservations`` property (a list or its JSON text; None or
    blank: none).  Raises :class:`ReservationError` naming ``where`` and the entry."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return []
    name = f"{PROPERTY} of {where or 'a group'}"
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ReservationError(f"{name} is not JSON: {raw[:80]!r}") from None
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise ReservationError(f"{name} must be a list of reservations")
    return [_one(entry, f"{name}, entry {i + 1}") for i, entry in enumerate(raw)]


def as_stored(reservations: Iterable[Reservation]) -> list[dict[str, Any]]:
    """The reservations as the group property keeps them (what :func:`parse_reservations` reads)."""
    out = []
    for r in reservations:
        entry: dict[str, Any] = {"pool": r.pool, "units": r.units, "tz": r.tz}
        if r.weekly is not None:
            day, begins, ends = r.weekly
            entry["weekly"] = f"{DAYS[day]} {begins:%H:%M}-{ends:%H:%M}"
        else:
            entry.update(start=r.start.isoformat(), end=r.end.isoformat())  # type: ignore[union-attr]
        out.append(entry)
    return out


def with_reservations(shares: Mapping[str, Mapping[str, Share]], reservations: Mapping[str, Iterable[Reservation]],
                      pool: str, now: datetime, grace: float) -> dict[str, Share]:
    """group -> its share of ``pool`` at ``now``: its ``gpu_share``, raised by the reservations
    whose window ``now`` is in: kept (a guarantee) for ``grace`` seconds from the window's
    start, then a claim (its members go first, nothing is kept); a burst is raised to fit."""
    now = now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)
    out = {group: mine[pool] for group, mine in shares.items() if pool in mine}
    for group, theirs in reservations.items():
        kept = claim = 0
        for r in theirs:
            window = r.window(now) if r.pool == pool else None
            if window is None:
                continue
            if (now - window[0]).total_seconds() < grace:
                kept += r.units
            else:
                claim += r.units
        if not kept and not claim:
            continue
        base = out.get(group, Share())
        guaranteed = max(base.guaranteed, kept)
        claimed = max(base.claim, claim + kept)
        burst = None if base.burst is None else max(base.burst, claimed)
        out[group] = Share(guaranteed, burst, claimed)
    return out


#: seconds ahead a wait estimate looks for reservation windows that open
KEEPS_AHEAD = 12 * 3600.0


def keeps_from(shares: Mapping[str, Share], reservations: Mapping[str, Iterable[Reservation]], pool: str,
               now: datetime, grace: float, mine: Iterable[str], held: Mapping[str, int],
               ahead: float = KEEPS_AHEAD) -> list[Keep]:
    """What the other groups keep of ``pool`` from a spawn of a member of ``mine``, for its wait
    estimate (core/waits.py): each group's unused guaranteed share (``shares``: the groups'
    ``gpu_share`` of the pool, before reservations), for good; each reservation's units beyond
    that, from its window's start (now, or within ``ahead`` seconds) to the end of its grace
    period.  ``held``: units each group holds now (a window that opens later is taken to find
    them held still)."""
    now = now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)
    mine = set(mine)
    keeps = []
    for group in sorted((set(shares) | set(reservations)) - mine):
        guaranteed, used = shares[group].guaranteed if group in shares else 0, held.get(group, 0)
        if guaranteed > used:
            keeps.append(Keep(guaranteed - used, 0.0, float("inf")))
        for r in reservations.get(group, ()):
            units = r.units - max(guaranteed, used)
            if r.pool != pool or units <= 0:
                continue
            for start, end in r.windows(now, now + timedelta(seconds=ahead)):
                kept_until = min(start + timedelta(seconds=grace), end)
                if kept_until > now:
                    keeps.append(Keep(units, (start - now).total_seconds(), (kept_until - now).total_seconds()))
    return keeps
