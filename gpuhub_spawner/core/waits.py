"""How long a place in a pool's line will wait: a range from observed hold times (pure).

What is known when someone joins the line:

- how long each of the pool's holders has held its unit so far (the usage ledger's open
  intervals);
- how long the pool's servers held their units before (its closed intervals, the recent ones);
- the culls already announced: a holder warned by the culler is freed by its ``cull_at`` at the
  latest (the warning can be lifted, so it bounds the wait, it does not set it).

The rule: a holder that has held for ``age`` seconds frees its unit after a residual drawn from
the past holds longer than ``age`` (their lower and upper quartiles, less ``age``), or by its
announced cull, whichever comes first.  The k-th in line gets the k-th unit freed; a unit taken
by someone ahead comes free again after a whole typical hold.  The range is that k-th release
with every holder at its lower quartile, and with every holder at its upper quartile: about half
the holds of the past fall between them, so the range is a likely span, not a promise.

Units kept from the place (:class:`Keep`: a group's unused guaranteed share, a reservation in
its grace period, or one whose window opens while the place waits) are walked through the same
releases: a unit that comes free while one of them keeps it is not the place's; it comes back
when that keeping ends (a reservation's grace period), or never (a guarantee).  Units free now
but kept (``free``) are releases at once that are kept so.

Too little history (fewer than :data:`MIN_HOLDS` past holds) gives no range, unless every unit
the place waits for is bounded by an announced cull or a grace period's end; the message then
says the hub has no basis yet, rather than inventing one.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: past holds needed before their spread is used
MIN_HOLDS = 5
LOW_Q, HIGH_Q = 0.25, 0.75


@dataclass(frozen=True)
class Holding:
    """One unit of the pool held now: for ``age`` seconds; ``cull_in``: seconds until an
    announced cull frees it at the latest (None: none announced)."""

    age: float
    cull_in: float | None = None


@dataclass(frozen=True)
class Keep:
    """``units`` that come free from ``start`` until ``until`` (seconds from now; inf: no end)
    are kept from the place for a group, and lent to it at ``until``."""

    units: int
    start: float
    until: float


@dataclass(frozen=True)
class Estimate:
    """The likely wait in seconds: ``low`` to ``high`` (``high`` None: longer than the history
    shows); ``holds``: how many past holds it rests on; ``kept``: units kept for groups counted;
    ``culled``: an announced cull counted."""

    low: float
    high: float | None
    holds: int
    kept: bool = False
    culled: bool = False


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted ``ordered`` (linear between neighbours)."""
    if not ordered:
        raise ValueError("no values")
    pos = q * (len(ordered) - 1)
    i = int(pos)
    j = min(i + 1, len(ordered) - 1)
    return ordered[i] + (ordered[j] - ordered[i]) * (pos - i)


def _residual(age: float, ordered: Sequence[float]) -> tuple[float, float]:
    """(low, high) seconds left for a holder ``age`` seconds in; inf when no past hold lasted longer."""
    longer = [d - age for d in ordered if d > age]
    if not longer:
        return math.inf, math.inf
    return quantile(longer, LOW_Q), quantile(longer, HIGH_Q)


def _kth_release(frees: list[float], k: int, again: float, keeps: Sequence[Keep] = ()) -> tuple[float, bool]:
    """When the k-th unit comes free for the place, each unit taken by someone ahead freed again
    ``again`` later, and a unit freed while a :class:`Keep` holds it back lent at its end; and
    whether a keep held one back."""
    heap = list(frees)
    heapq.heapify(heap)
    left = [keep.units for keep in keeps]
    taken = 0
    held_back = False
    while heap:
        when = heapq.heappop(heap)
        if not math.isfinite(when):
            break
        i = next((i for i, keep in enumerate(keeps) if left[i] > 0 and keep.start <= when < keep.until), None)
        if i is not None:
            left[i] -= 1
            held_back = True
            heapq.heappush(heap, keeps[i].until)
            continue
        taken += 1
        if taken == k:
            return when, held_back
        heapq.heappush(heap, when + again)
    return math.inf, held_back


def estimate(position: int, holdings: Sequence[Holding], past: Sequence[float],
             keeps: Sequence[Keep] = (), free: int = 0) -> Estimate | None:
    """The wait of the ``position``-th (1-based) in line, or None when there is no basis;
    ``free``: units free now that ``keeps`` hold back from the place."""
    if position < 1:
        return None
    ordered = sorted(d for d in past if d > 0 and math.isfinite(d))
    known = len(ordered) >= MIN_HOLDS
    free = min(free, sum(k.units for k in keeps if k.start <= 0 < k.until))  # only those kept count
    if not (holdings or free):
        return None
    lows, highs = [0.0] * free, [0.0] * free
    for h in holdings:
        low, high = _residual(h.age, ordered) if known else (math.inf, math.inf)
        if h.cull_in is not None:
            cull = max(0.0, h.cull_in)
            low, high = min(low, cull), min(high, cull)
        lows.append(low)
        highs.append(high)
    again_low = quantile(ordered, LOW_Q) if known else math.inf
    again_high = quantile(ordered, HIGH_Q) if known else math.inf
    low, kept_low = _kth_release(lows, position, again_low, keeps)
    if not math.isfinite(low):
        return None
    high, kept_high = _kth_release(highs, position, again_high, keeps)
    return Estimate(low, high if math.isfinite(high) else None, len(ordered), kept_low or kept_high,
                    any(h.cull_in is not None for h in holdings))


def _range(low: float, high: float) -> str:
    """"about 3–6 minutes", "up to 40 seconds", "about 2 minutes": in the unit the high end needs."""
    if high < 90:
        lo, hi, unit = round(low / 10) * 10, max(10, math.ceil(high / 10) * 10), "seconds"
        if high - low < 5:
            return f"about {hi} {unit}"
    else:
        lo, hi, unit = math.floor(low / 60), math.ceil(high / 60), "minutes"
        if high - low < 30:  # one moment (an announced cull): not a span that rounding widened
            return f"about {round(high / 60)} {unit}"
    if lo <= 0:
        return f"up to {hi} {unit}"
    return f"about {hi} {unit}" if lo >= hi else f"about {lo}–{hi} {unit}"


def _at_least(low: float) -> str:
    return f"{max(10, round(low / 10) * 10)} seconds" if low < 90 else f"{math.floor(low / 60)} minutes"


def wait_text(est: Estimate | None, max_wait: float) -> str:
    """The queue message's sentence about how long."""
    if est is None:
        return "No wait estimate yet: too few servers of this kind have finished for the hub to tell."
    parts = [f"{est.holds} recent servers' hold times"] if est.holds >= MIN_HOLDS else []
    if est.holds < MIN_HOLDS and (est.culled or not est.kept):
        parts.append("announced culls")
    if est.kept:
        parts.append("the units kept for other groups' reservations and guaranteed shares")
    basis = "from " + " and ".join(parts)
    if est.high is None:
        text = f"Likely wait: more than {_at_least(est.low)} ({basis})."
    else:
        text = f"Likely wait: {_range(est.low, est.high)} ({basis})."
    if max_wait and est.low > max_wait:
        text += " That is past your time limit in line: a CPU-only server, or trying later, may suit you better."
    return text
