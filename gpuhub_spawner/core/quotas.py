"""Quota policy: parse group properties, resolve defaults -> groups -> user, check a spawn (pure).

Quota fields, all optional (a field that is absent is *not set*):

==========================  ================================================================
``allowed_profiles``        profile slugs the user may pick; ``None`` (or ``"*"``) means all
``max_gpu_units``           GPU units held at once across the user's servers (whole number 0-1000)
``gpu_hours_per_period``    GPU-hours per ``period`` (number 0-1,000,000)
``period``                  ``day``, ``week``, ``month`` or ``total`` (default ``week``)
``max_session_hours``       longest a server may run (number > 0, at most 8760: one year)
``cpu_limit``               CPUs per server (number 0.01-1024)
``mem_limit``               memory per server, 6M-64T (see :func:`parse_bytes`); stored as bytes
``max_named_servers``       named servers per user (whole number 0-1000)
``priority``                place in the GPU queue, higher first (whole number ±1,000,000, default 0)
==========================  ================================================================

Every numeric field has an upper bound (:data:`BOUNDS`): a value beyond it (``1e9`` GPU-hours,
a million GPUs) is a typo or a test, and is refused with the allowed range rather than taken as
"no limit".  Write ``"unlimited"`` for no limit.

Values usually come from JupyterHub group properties typed into the admin panel, so they are
often strings: ``"2"``, ``"1.5"``, ``"mig-1g-10gb, cpu"`` or ``'["mig-1g-10gb", "cpu"]'``
are accepted as well as numbers and lists.  Booleans are not numbers.  A blank string means
*not set*; ``null`` means *no limit* (for ``period`` and ``priority``: not set), and so do
``"unlimited"``, ``"none"`` and ``"null"`` for the numeric limits.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from gpuhub_spawner.core.sizes import FORMS as SIZE_FORMS
from gpuhub_spawner.core.sizes import SizeError, format_size, read_size, size_error

PERIODS = ("day", "week", "month", "total")
#: Fields where ``None`` means "no limit"; ``period`` and ``priority`` always have a value.
LIMIT_FIELDS = ("allowed_profiles", "max_gpu_units", "gpu_hours_per_period", "max_session_hours")
LIMIT_FIELDS += ("cpu_limit", "mem_limit", "max_named_servers")
FIELDS = (*LIMIT_FIELDS, "period", "priority")

_NO_LIMIT = {"unlimited", "none", "null"}
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_INT = re.compile(r"^[+-]?[0-9]{1,30}$")
_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
MIB, TIB = 1024**2, 1024**4

#: (lowest, highest) allowed value of each numeric field, both inclusive.
BOUNDS: dict[str, tuple[float, float]] = {
    "max_gpu_units": (0, 1000),
    "gpu_hours_per_period": (0, 1_000_000),
    "max_session_hours": (0, 8760),  # > 0: zero is refused separately
    "cpu_limit": (0.01, 1024),  # Docker's CPU quota is whole microseconds of a 100 ms period
    "mem_limit": (6 * MIB, 64 * TIB),  # Docker refuses less than 6 MiB
    "max_named_servers": (0, 1000),
    "priority": (-1_000_000, 1_000_000),
}
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class QuotaError(ValueError):
    """A quota value that cannot be used; ``str()`` names the field, the value and what is allowed."""

    def __init__(self, field: str, message: str, where: str = ""):
        self.field = field
        self.message = message
        self.where = where
        super().__init__(f"{field}: {message}" + (f" (in {where})" if where else ""))


class _Invalid(Exception):
    """Raised by the converters; :func:`parse_quota` turns it into a :class:`QuotaError`."""


@dataclass(frozen=True)
class QuotaPolicy:
    """The resolved quota of one user; ``None`` means no limit."""

    allowed_profiles: frozenset[str] | None = None
    max_gpu_units: int | None = None
    gpu_hours_per_period: float | None = None
    period: str = "week"
    max_session_hours: float | None = None
    cpu_limit: float | None = None
    mem_limit: int | None = None
    max_named_servers: int | None = None
    priority: int = 0

    def allows_profile(self, slug: str) -> bool:
        return self.allowed_profiles is None or slug in self.allowed_profiles


@dataclass(frozen=True)
class Decision:
    """Outcome of :func:`check_spawn`; ``reason`` is from :data:`gpuhub_spawner.hub.errors.REASONS`."""

    ok: bool
    reason: str = ""
    message: str = ""
    resets_at: datetime | None = None


# ---- converters: value -> validated value, or _Invalid --------------------------------


def _whole(value: Any, minimum: int | None) -> int:
    if isinstance(value, str) and _INT.match(value.strip()):
        value = int(value.strip())
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid
    if minimum is not None and value < minimum:
        raise _Invalid
    return value


def _number(value: Any, positive: bool) -> float:
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value.strip())
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _Invalid
    try:
        number = float(value)
    except OverflowError:
        raise _Invalid from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise _Invalid
    return number


def parse_bytes(value: Any) -> int:
    """A memory size in whole bytes above zero, in gpuhub's one size grammar
    (:func:`gpuhub_spawner.core.sizes.read_size`: ``"4G"``, ``"512M"``, ``"1.5T"``, bytes; and for
    one release the old forms such as ``"4Gi"`` already stored in group properties). Raises
    ``SizeError`` (a ValueError naming the accepted forms and the fix) otherwise.
    """
    if isinstance(value, float) and not value.is_integer():
        raise size_error(value)  # a fraction of a byte is a typo, not a size
    size = read_size(value)
    if size < 1:
        raise size_error(value)
    return size


def _profiles(value: Any) -> frozenset[str] | None:
    if isinstance(value, str):
        text = value.strip()
        if text == "*":
            return None
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):
                raise _Invalid from None
        else:
            value = [part for part in (p.strip() for p in text.split(",")) if part]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise _Invalid
    if not all(isinstance(slug, str) and _SLUG.match(slug) for slug in value):
        raise _Invalid
    return frozenset(value)


def _period(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in PERIODS:
        raise _Invalid
    return value.strip().lower()


_CONVERTERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "allowed_profiles": (_profiles, "a list of profile names such as 'mig-1g-10gb, cpu', or '*' for all"),
    "max_gpu_units": (lambda v: _whole(v, 0), "a whole number ≥ 0 (or 'unlimited')"),
    "gpu_hours_per_period": (lambda v: _number(v, False), "a number ≥ 0 (or 'unlimited')"),
    "period": (_period, "one of " + ", ".join(PERIODS)),
    "max_session_hours": (lambda v: _number(v, True), "a number > 0 (or 'unlimited')"),
    "cpu_limit": (lambda v: _number(v, True), "a number > 0 (or 'unlimited')"),
    "mem_limit": (parse_bytes, f"a size: {SIZE_FORMS} (or 'unlimited')"),
    "max_named_servers": (lambda v: _whole(v, 0), "a whole number ≥ 0 (or 'unlimited')"),
    "priority": (lambda v: _whole(v, None), "a whole number such as 0, 10 or -5"),
}


def _figure(value: float) -> str:
    """``1,000,000``, ``0.01``."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def allowed_range(field: str) -> str:
    """The allowed range of a numeric field in words, e.g. ``from 0 to 1,000``."""
    low, high = BOUNDS[field]
    if field == "mem_limit":
        return f"from {format_size(low)} to {format_size(high)}"
    if field == "max_session_hours":
        return f"more than 0 and at most {_figure(high)}"
    return f"from {_figure(low)} to {_figure(high)}"


def _check_bounds(field: str, value: Any, raw: Any, where: str) -> None:
    if field in BOUNDS and value is not None:
        low, high = BOUNDS[field]
        if not low <= value <= high:
            unlimited = "" if field == "priority" else " (or 'unlimited')"
            message = f"{_show(raw)} is out of range: allowed {allowed_range(field)}{unlimited}"
            raise QuotaError(field, message, where)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_field(field: str, value: Any, where: str) -> tuple[bool, Any]:
    """(is_set, validated value) for one recognised field."""
    if isinstance(value, str) and not value.strip():
        return False, None
    if value is None:
        return field in LIMIT_FIELDS, None
    word = isinstance(value, str) and value.strip().lower() in _NO_LIMIT
    if word and field in LIMIT_FIELDS and field != "allowed_profiles":
        return True, None
    convert, allowed = _CONVERTERS[field]
    try:
        converted = convert(value)
    except SizeError as e:
        raise QuotaError(field, f"{e} (or 'unlimited')", where) from None
    except _Invalid:
        raise QuotaError(field, f"{_show(value)} is not {allowed}", where) from None
    _check_bounds(field, converted, value, where)
    return True, converted


def parse_quota(raw: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """The recognised, validated quota fields of ``raw``; other keys are ignored.

    ``where`` (e.g. ``"group 'students'"``) is added to error messages.  A field set to
    *no limit* maps to ``None``; a field that is absent or blank is left out.
    """
    if not isinstance(raw, Mapping):
        raise QuotaError("quota", f"{_show(raw)} is not a mapping of quota fields", where)
    parsed: dict[str, Any] = {}
    for field in FIELDS:
        if field in raw:
            is_set, value = _parse_field(field, raw[field], where)
            if is_set:
                parsed[field] = value
    return parsed


def validate_quota_edit(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Like :func:`parse_quota`, but unknown keys are errors (for the admin API)."""
    if not isinstance(raw, Mapping):
        raise QuotaError("quota", f"{_show(raw)} is not a mapping of quota fields")
    for key in raw:
        if key not in FIELDS:
            raise QuotaError(str(key)[:60], f"is not a quota field; known fields: {', '.join(FIELDS)}")
    return parse_quota(raw)


# ---- resolution -----------------------------------------------------------------------


def _most_permissive(field: str, values: list[Any]) -> Any:
    if field == "priority":
        return max(values)
    if any(v is None for v in values):
        return None
    if field == "allowed_profiles":
        return frozenset().union(*values)
    return max(values)


def _merge_groups(groups: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for field in FIELDS:
        values = [g[field] for g in groups if field in g]
        if values and field != "period":
            merged[field] = _most_permissive(field, values)
    budget = "gpu_hours_per_period"
    if budget in merged:
        winner = next(g for g in groups if budget in g and g[budget] == merged[budget])
        if "period" in winner:
            merged["period"] = winner["period"]
    else:
        periods = [g["period"] for g in groups if "period" in g]
        if periods:
            merged["period"] = periods[0]
    return merged


def resolve_policy(
    defaults: Mapping[str, Any],
    group_values: Sequence[Mapping[str, Any]],
    user_override: Mapping[str, Any] | None = None,
) -> QuotaPolicy:
    """The quota of one user: defaults, then their groups, then their own override.

    - ``defaults`` (hub configuration) give every field its starting value.
    - The user's groups are combined field by field, most permissive wins; a group that does
      not set a field has no say on it.  ``allowed_profiles``: the union (``None``, all
      profiles, beats any list).  Numeric limits: the largest (``None``, unlimited, beats any
      number).  ``priority``: the highest.  ``period`` follows the GPU-hours budget: it is
      the period of the group whose ``gpu_hours_per_period`` won (the first such group on a
      tie, and only if it sets a period); when no group sets a budget, the first group that
      sets a period gives it.
    - ``user_override`` then replaces, field by field, whatever it sets.

    Every mapping is validated with :func:`parse_quota`; a bad value raises :class:`QuotaError`.
    """
    resolved = parse_quota(defaults, "defaults")
    groups = [parse_quota(g, f"group properties #{i + 1}") for i, g in enumerate(group_values)]
    resolved.update(_merge_groups(groups))
    if user_override:
        resolved.update(parse_quota(user_override, "user override"))
    return QuotaPolicy(**resolved)


# ---- periods and checks ---------------------------------------------------------------


def period_bounds(now: datetime, period: str) -> tuple[datetime, datetime | None]:
    """Start of the current ``period`` and when it resets, in UTC (naive ``now`` is UTC).

    Days start at 00:00 UTC, weeks on Monday 00:00 UTC, months on the 1st; ``total`` never
    resets and starts at ``datetime.min``.
    """
    if period not in PERIODS:
        raise QuotaError("period", f"{_show(period)} is not one of {', '.join(PERIODS)}")
    if period == "total":
        return datetime.min.replace(tzinfo=timezone.utc), None
    now = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    return start, start.replace(month=start.month + 1)


def budget_left_seconds(policy: QuotaPolicy, used_seconds: float) -> float | None:
    """GPU-seconds left in the current period, never below 0; ``None`` when unlimited."""
    if policy.gpu_hours_per_period is None:
        return None
    return max(0.0, policy.gpu_hours_per_period * 3600 - used_seconds)


_SPAN = {"day": "today", "week": "this week", "month": "this month", "total": "in total"}


@dataclass(frozen=True)
class BudgetView:
    """A user's GPU-hour budget now, as the spawn form, the culler, the admin page and the
    exporter all show it (one computation, so they always agree)."""

    period: str
    since: datetime  # start of the current period: the usage to count is since then
    resets_at: datetime | None  # None: the period is ``total`` and never resets
    used_seconds: float
    limit_seconds: float | None  # None: no GPU-hour limit

    @property
    def left_seconds(self) -> float | None:
        """GPU-seconds left, never below 0; ``None`` when unlimited."""
        return None if self.limit_seconds is None else max(0.0, self.limit_seconds - self.used_seconds)

    def notice(self) -> str:
        """``GPU time left this week: 1.5 h of 10 h.``; empty when unlimited."""
        if self.limit_seconds is None:
            return ""
        left = (self.left_seconds or 0.0) / 3600
        return f"GPU time left {_SPAN[self.period]}: {left:.1f} h of {self.limit_seconds / 3600:g} h."


def budget_since(policy: QuotaPolicy, now: datetime) -> datetime:
    """Since when usage counts against ``policy``'s budget (the start of its current period)."""
    return period_bounds(now, policy.period)[0]


def budget_view(policy: QuotaPolicy, used_seconds: float, now: datetime) -> BudgetView:
    """The budget of a user with ``policy`` who used ``used_seconds`` GPU-seconds since
    :func:`budget_since`; ``now`` may be naive (UTC)."""
    since, resets = period_bounds(now, policy.period)
    hours = policy.gpu_hours_per_period
    return BudgetView(policy.period, since, resets, used_seconds, None if hours is None else hours * 3600)


def format_when(when: datetime) -> str:
    """``Monday 2026-11-23 00:00 UTC`` (English day names whatever the locale)."""
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    return f"{_DAYS[when.weekday()]} {when:%Y-%m-%d %H:%M} UTC"


def _plural(count: float, word: str) -> str:
    """``1 GPU unit``, ``2 GPU units``, ``1.5 GPU-hours``."""
    return f"{count:,.2f}".rstrip("0").rstrip(".") + f" {word}" + ("" if count == 1 else "s")


def _units_message(held: int, limit: int) -> str:
    if limit == 0:
        return "Your quota allows no GPU servers. Start a CPU-only server instead."
    if held == limit:
        first = f"You already hold {_plural(held, 'GPU unit')}, the most your quota allows."
    else:
        first = f"You already hold {_plural(held, 'GPU unit')}; your quota allows {limit}."
    return first + " Stop another GPU server first, or start a CPU-only server."


def _budget_decision(policy: QuotaPolicy, now: datetime) -> Decision:
    hours = policy.gpu_hours_per_period or 0.0
    if hours == 0:
        message = "Your quota gives you no GPU time. Start a CPU-only server instead."
        return Decision(False, "quota-exceeded", message)
    budget = f"You have used your {_plural(hours, 'GPU-hour')}"
    _, resets = period_bounds(now, policy.period)
    if resets is None:
        message = f"{budget} in total; ask the hub's admin for more."
    else:
        span = "today" if policy.period == "day" else f"this {policy.period}"
        message = f"{budget} for {span}; it resets on {format_when(resets)}."
    return Decision(False, "quota-exceeded", message + " A CPU-only server is still available.", resets)


def check_spawn(
    policy: QuotaPolicy,
    profile_slug: str,
    gpu: bool,
    units_held: int,
    gpu_seconds_used: float,
    now: datetime,
) -> Decision:
    """May this user start a server with ``profile_slug`` now?

    Checked in order: the profile is allowed; then, for GPU profiles only, the number of
    units already held and the GPU-hours used this period.  CPU-only profiles are never
    refused for GPU limits.
    """
    if not policy.allows_profile(profile_slug):
        allowed = sorted(policy.allowed_profiles or ())
        choose = f"Choose one of: {', '.join(allowed)}." if allowed else "Ask the hub's admin."
        message = f"You may not use the profile '{profile_slug[:64]}'. {choose}"
        return Decision(False, "forbidden-profile", message)
    if not gpu:
        return Decision(True)
    limit = policy.max_gpu_units
    if limit is not None and units_held >= limit:
        return Decision(False, "quota-exceeded", _units_message(units_held, limit))
    left = budget_left_seconds(policy, gpu_seconds_used)
    if left is not None and left <= 0:
        return _budget_decision(policy, now)
    return Decision(True)
