"""Fair share over time: GPU use that fades, so light users go ahead of heavy ones in line.

Within one priority, a pool's line is ordered by each user's *decayed* GPU use: every
GPU-second counts ``2 ** (-age / half_life)``, so an hour used a half-life ago weighs half an
hour now. Someone who trained all yesterday waits behind someone who has not used a GPU this
week; after a few half-lives both count alike again. Equal use keeps arrival order, so with no
history (the first morning of a workshop) the line is first come, first served.

Pure rules here; the spawners read the usage ledger and hand the figures to the line
(:class:`gpuhub_spawner.hub.fairline.FairLine`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta

#: a user's decayed use is not worth reading further back than this many half-lives (< 0.1 %)
HORIZON_HALF_LIVES = 10


def horizon(now: datetime, half_life_s: float) -> datetime:
    """The oldest moment whose use still counts (it would weigh under 2**-10)."""
    return now - timedelta(seconds=half_life_s * HORIZON_HALF_LIVES)


def decayed_seconds(intervals: Iterable[tuple[datetime, datetime | None]], now: datetime,
                    half_life_s: float) -> float:
    """GPU-seconds of ``intervals`` (start, end or None while open), each second weighted by
    ``2 ** (-(now - t) / half_life_s)``; 0 when the half-life is 0 (fair share off).

    The weight integrates exactly over each interval: half_life/ln 2 * (w(end) - w(start)).
    """
    if half_life_s <= 0:
        return 0.0
    rate = math.log(2) / half_life_s
    total = 0.0
    for start, end in intervals:
        end = now if end is None or end > now else end
        if end <= start:
            continue
        age_end, length = (now - end).total_seconds(), (end - start).total_seconds()
        total += math.exp(-rate * age_end) * -math.expm1(-rate * length) / rate  # exact, also for long half-lives
    return total


def hours_label(seconds: float) -> str:
    """A user's decayed use as the form and the progress stream say it."""
    if seconds <= 0:
        return "no GPU time"
    if seconds < 60:
        return "under a GPU-minute"
    if seconds < 3600:
        minutes = int(seconds // 60)
        return f"{minutes} GPU-minute{'' if minutes == 1 else 's'}"
    hours = seconds / 3600
    return f"{hours:.1f} GPU-hours" if hours < 10 else f"{hours:.0f} GPU-hours"


def ahead_text(higher_priority: int, less_use: int, earlier: int, use_s: float, half_life_h: float) -> str:
    """Why the people ahead in line are there, for the progress stream ('' when nobody is)."""
    parts = []
    if higher_priority:
        parts.append(f"{higher_priority} with a higher priority")
    if less_use:
        parts.append(f"{less_use} who used less GPU time lately")
    if earlier:
        parts.append(f"{earlier} who asked first")
    if not parts:
        return ""
    text = "Ahead of you: " + ", ".join(parts) + "."
    if half_life_h > 0:
        text += f" Yours: {hours_label(use_s)} (past use counts half after {half_life_h:g} h)."
    return text


def form_note(use_s: float, half_life_h: float) -> str:
    """The spawn form's line about the order in a full pool's line ('' when fair share is off)."""
    if half_life_h <= 0:
        return ""
    return (f"When a GPU pool is full, people who used less GPU time lately go first in its line "
            f"(yours: {hours_label(use_s)}; past use counts half after {half_life_h:g} h).")
