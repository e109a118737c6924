"""Fair share over time (core/fairshare.py): decayed GPU use and what the line says about it."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from gpuhub_spawner.core.fairshare import ahead_text, decayed_seconds, horizon, hours_label

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)
H = 3600.0  # one hour
FULL_HOUR_NOW = H / math.log(2) * 0.5  # an hour ending now, with a half-life of an hour


def hours_ago(a: float, b: float | None) -> tuple[datetime, datetime | None]:
    return NOW - timedelta(hours=a), (None if b is None else NOW - timedelta(hours=b))


@pytest.mark.parametrize(
    "spans, half_life, expected",
    [
        ([hours_ago(1, 0)], H, FULL_HOUR_NOW),
        ([hours_ago(2, 1)], H, FULL_HOUR_NOW / 2),  # the same hour, one half-life older: half
        ([hours_ago(3, 2)], H, FULL_HOUR_NOW / 4),
        ([hours_ago(1, None)], H, FULL_HOUR_NOW),  # still open: counted up to now
        ([hours_ago(1, 0), hours_ago(2, 1)], H, FULL_HOUR_NOW * 1.5),
        ([hours_ago(1, 0)], 1e9, H),  # a half-life far longer than the use: plain seconds
        ([hours_ago(1, 0)], 0, 0.0),  # off
        ([hours_ago(0, 1)], H, 0.0),  # an end before its start counts nothing
        ([(NOW + timedelta(hours=1), None)], H, 0.0),  # starts in the future: nothing yet
        ([], H, 0.0),
    ],
    ids=["hour-now", "hour-one-half-life-ago", "two-half-lives-ago", "open", "both", "no-decay", "off",
         "backwards", "future", "none"],
)
def test_decayed_seconds(spans, half_life, expected):
    assert decayed_seconds(spans, NOW, half_life) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_light_user_counts_less_than_heavy_user_and_both_fade_alike():
    light = [hours_ago(1, 0.5)]  # half an hour just now
    heavy = [hours_ago(30, 22)]  # eight hours, yesterday
    day = 24 * H
    assert decayed_seconds(light, NOW, day) < decayed_seconds(heavy, NOW, day)
    # a week on, yesterday's eight hours count less than a tenth of what they did
    later = NOW + timedelta(days=7)
    assert decayed_seconds(heavy, later, day) < decayed_seconds(heavy, NOW, day) / 100


def test_horizon_reaches_back_ten_half_lives():
    assert horizon(NOW, H) == NOW - timedelta(hours=10)


@pytest.mark.parametrize(
    "seconds, label",
    [(0, "no GPU time"), (20, "under a GPU-minute"), (90, "1 GPU-minute"), (150, "2 GPU-minutes"), (3600 * 2.26, "2.3 GPU-hours"),
     (3600 * 31.4, "31 GPU-hours")],
)
def test_hours_label(seconds, label):
    assert hours_label(seconds) == label


@pytest.mark.parametrize(
    "counts, use, half_life, text",
    [
        ((0, 0, 0), 0, 24, ""),
        ((0, 0, 3), 0, 0, "Ahead of you: 3 who asked first."),
        ((1, 2, 0), 3600 * 5, 24,
         "Ahead of you: 1 with a higher priority, 2 who used less GPU time lately. "
         "Yours: 5.0 GPU-hours (past use counts half after 24 h)."),
        ((0, 1, 1), 0, 72, "Ahead of you: 1 who used less GPU time lately, 1 who asked first. "
                           "Yours: no GPU time (past use counts half after 72 h)."),
    ],
)
def test_ahead_text(counts, use, half_life, text):
    assert ahead_text(*counts, use, half_life) == text
