"""Quota parsing, resolution (defaults -> groups -> user), periods and spawn checks (pure tables)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from gpuhub_spawner.core import quotas
from gpuhub_spawner.core.quotas import (
    Decision,
    QuotaError,
    QuotaPolicy,
    budget_left_seconds,
    check_spawn,
    parse_quota,
    period_bounds,
    resolve_policy,
    validate_quota_edit,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

UTC = timezone.utc
GIB = 1024**3


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---- parse_quota: good values --------------------------------------------------------

PARSE_OK = [
    pytest.param({"max_gpu_units": 2}, {"max_gpu_units": 2}, id="units-int"),
    pytest.param({"max_gpu_units": " 2 "}, {"max_gpu_units": 2}, id="units-string"),
    pytest.param({"max_gpu_units": 2.0}, {"max_gpu_units": 2}, id="units-integral-float"),
    pytest.param({"max_gpu_units": "0"}, {"max_gpu_units": 0}, id="units-zero"),
    pytest.param({"max_gpu_units": "unlimited"}, {"max_gpu_units": None}, id="units-unlimited-word"),
    pytest.param({"max_gpu_units": "None"}, {"max_gpu_units": None}, id="units-none-word"),
    pytest.param({"max_gpu_units": None}, {"max_gpu_units": None}, id="units-null"),
    pytest.param({"max_gpu_units": ""}, {}, id="units-blank-is-not-set"),
    pytest.param({"gpu_hours_per_period": "1.5"}, {"gpu_hours_per_period": 1.5}, id="hours-string"),
    pytest.param({"gpu_hours_per_period": 3}, {"gpu_hours_per_period": 3.0}, id="hours-int"),
    pytest.param({"gpu_hours_per_period": "0"}, {"gpu_hours_per_period": 0.0}, id="hours-zero"),
    pytest.param({"gpu_hours_per_period": ".5"}, {"gpu_hours_per_period": 0.5}, id="hours-leading-dot"),
    pytest.param({"gpu_hours_per_period": "1e2"}, {"gpu_hours_per_period": 100.0}, id="hours-exponent"),
    pytest.param({"period": "Week "}, {"period": "week"}, id="period-case-space"),
    pytest.param({"period": "total"}, {"period": "total"}, id="period-total"),
    pytest.param({"period": None}, {}, id="period-null-is-not-set"),
    pytest.param({"max_session_hours": "8"}, {"max_session_hours": 8.0}, id="session-string"),
    pytest.param({"max_session_hours": 0.25}, {"max_session_hours": 0.25}, id="session-float"),
    pytest.param({"cpu_limit": "0.5"}, {"cpu_limit": 0.5}, id="cpu-string"),
    pytest.param({"cpu_limit": 4}, {"cpu_limit": 4.0}, id="cpu-int"),
    pytest.param({"mem_limit": "4G"}, {"mem_limit": 4 * GIB}, id="mem-G"),
    pytest.param({"mem_limit": "512m"}, {"mem_limit": 512 * 1024**2}, id="mem-lowercase-m"),
    pytest.param({"mem_limit": "2T"}, {"mem_limit": 2 * 1024**4}, id="mem-T"),
    pytest.param({"mem_limit": "65536k"}, {"mem_limit": 64 * 1024**2}, id="mem-k"),
    pytest.param({"mem_limit": "8388608"}, {"mem_limit": 8 * 1024**2}, id="mem-digits"),
    pytest.param({"mem_limit": 8388608}, {"mem_limit": 8 * 1024**2}, id="mem-int-bytes"),
    pytest.param({"mem_limit": "4Gi"}, {"mem_limit": 4 * GIB}, id="mem-Gi"),
    pytest.param({"mem_limit": "4GB"}, {"mem_limit": 4 * GIB}, id="mem-GB"),
    pytest.param({"mem_limit": "4GiB"}, {"mem_limit": 4 * GIB}, id="mem-GiB"),
    pytest.param({"mem_limit": "1.5G"}, {"mem_limit": 3 * GIB // 2}, id="mem-fraction"),
    pytest.param({"mem_limit": "unlimited"}, {"mem_limit": None}, id="mem-unlimited"),
    pytest.param({"max_named_servers": "0"}, {"max_named_servers": 0}, id="named-zero"),
    pytest.param({"max_named_servers": 3}, {"max_named_servers": 3}, id="named-int"),
    pytest.param({"priority": "-5"}, {"priority": -5}, id="priority-negative-string"),
    pytest.param({"priority": 10}, {"priority": 10}, id="priority-int"),
    pytest.param({"priority": None}, {}, id="priority-null-is-not-set"),
    pytest.param(
        {"allowed_profiles": "mig-1g-10gb, cpu"},
        {"allowed_profiles": frozenset({"mig-1g-10gb", "cpu"})},
        id="profiles-comma-string",
    ),
    pytest.param(
        {"allowed_profiles": '["mig-1g-10gb", "cpu"]'},
        {"allowed_profiles": frozenset({"mig-1g-10gb", "cpu"})},
        id="profiles-json-string",
    ),
    pytest.param(
        {"allowed_profiles": ["shared", "cpu", "cpu"]},
        {"allowed_profiles": frozenset({"shared", "cpu"})},
        id="profiles-list",
    ),
    pytest.param(
        {"allowed_profiles": "cpu,"}, {"allowed_profiles": frozenset({"cpu"})}, id="profiles-trailing-comma"
    ),
    pytest.param(
        {"allowed_profiles": []}, {"allowed_profiles": frozenset()}, id="profiles-empty-list-none-allowed"
    ),
    pytest.param({"allowed_profiles": "*"}, {"allowed_profiles": None}, id="profiles-star-is-all"),
    pytest.param({"allowed_profiles": None}, {"allowed_profiles": None}, id="profiles-null-is-all"),
    pytest.param({"allowed_profiles": "  "}, {}, id="profiles-blank-is-not-set"),
    pytest.param(
        {"description": "Workshop attendees", "colour": ["red"], "max_gpu_units": "1"},
        {"max_gpu_units": 1},
        id="unrelated-keys-ignored",
    ),
    pytest.param({}, {}, id="empty"),
]


@pytest.mark.parametrize("raw, expected", PARSE_OK)
def test_parse_quota_accepts(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    assert parse_quota(raw, "group 'students'") == expected


# ---- parse_quota: bad values, every field --------------------------------------------

PARSE_BAD = [
    pytest.param("max_gpu_units", "two", "whole number ≥ 0", id="units-word"),
    pytest.param("max_gpu_units", -1, "whole number ≥ 0", id="units-negative"),
    pytest.param("max_gpu_units", "-1", "whole number ≥ 0", id="units-negative-string"),
    pytest.param("max_gpu_units", 1.5, "whole number ≥ 0", id="units-fraction"),
    pytest.param("max_gpu_units", "1.5", "whole number ≥ 0", id="units-fraction-string"),
    pytest.param("max_gpu_units", True, "whole number ≥ 0", id="units-bool"),
    pytest.param("max_gpu_units", [1], "whole number ≥ 0", id="units-list"),
    pytest.param("max_gpu_units", "9" * 40, "whole number ≥ 0", id="units-absurdly-long"),
    pytest.param("gpu_hours_per_period", "lots", "number ≥ 0", id="hours-word"),
    pytest.param("gpu_hours_per_period", -1, "number ≥ 0", id="hours-negative"),
    pytest.param("gpu_hours_per_period", False, "number ≥ 0", id="hours-bool"),
    pytest.param("gpu_hours_per_period", math.nan, "number ≥ 0", id="hours-nan"),
    pytest.param("gpu_hours_per_period", math.inf, "number ≥ 0", id="hours-inf"),
    pytest.param("gpu_hours_per_period", "1e400", "number ≥ 0", id="hours-overflow-string"),
    pytest.param("gpu_hours_per_period", 10**400, "number ≥ 0", id="hours-overflow-int"),
    pytest.param("gpu_hours_per_period", "nan", "number ≥ 0", id="hours-nan-string"),
    pytest.param("period", "fortnight", "one of day, week, month, total", id="period-unknown"),
    pytest.param("period", 7, "one of day, week, month, total", id="period-number"),
    pytest.param("period", "unlimited", "one of day, week, month, total", id="period-unlimited"),
    pytest.param("max_session_hours", 0, "number > 0", id="session-zero"),
    pytest.param("max_session_hours", "0", "number > 0", id="session-zero-string"),
    pytest.param("max_session_hours", -2, "number > 0", id="session-negative"),
    pytest.param("max_session_hours", True, "number > 0", id="session-bool"),
    pytest.param("cpu_limit", "two", "number > 0", id="cpu-word"),
    pytest.param("cpu_limit", 0.0, "number > 0", id="cpu-zero"),
    pytest.param("cpu_limit", {"n": 1}, "number > 0", id="cpu-mapping"),
    pytest.param("mem_limit", "4X", "memory size such as '4G'", id="mem-bad-suffix"),
    pytest.param("mem_limit", "4iG", "memory size such as '4G'", id="mem-i-before-unit"),
    pytest.param("mem_limit", "four G", "memory size such as '4G'", id="mem-word"),
    pytest.param("mem_limit", "0", "memory size such as '4G'", id="mem-zero"),
    pytest.param("mem_limit", -1, "memory size such as '4G'", id="mem-negative"),
    pytest.param("mem_limit", True, "memory size such as '4G'", id="mem-bool"),
    pytest.param("max_named_servers", -1, "whole number ≥ 0", id="named-negative"),
    pytest.param("max_named_servers", "x", "whole number ≥ 0", id="named-word"),
    pytest.param("priority", "high", "whole number", id="priority-word"),
    pytest.param("priority", 1.5, "whole number", id="priority-fraction"),
    pytest.param("priority", True, "whole number", id="priority-bool"),
    pytest.param("priority", "unlimited", "whole number", id="priority-unlimited"),
    pytest.param("allowed_profiles", 5, "list of profile names", id="profiles-number"),
    pytest.param("allowed_profiles", True, "list of profile names", id="profiles-bool"),
    pytest.param("allowed_profiles", ["cpu", 3], "list of profile names", id="profiles-non-string"),
    pytest.param("allowed_profiles", '["cpu", 1]', "list of profile names", id="profiles-json-non-string"),
    pytest.param("allowed_profiles", "[cpu", "list of profile names", id="profiles-broken-json"),
    pytest.param("allowed_profiles", '{"cpu": 1}', "list of profile names", id="profiles-json-object"),
    pytest.param("allowed_profiles", "Bad Slug", "list of profile names", id="profiles-bad-slug"),
    pytest.param("allowed_profiles", {"cpu": True}, "list of profile names", id="profiles-mapping"),
    pytest.param("allowed_profiles", "[" * 5000, "list of profile names", id="profiles-deep-json"),
]


# ---- upper (and lower) bounds: an absurd value is an error naming the range, never "no limit"

OUT_OF_RANGE = [
    pytest.param("max_gpu_units", 1001, "from 0 to 1,000", id="units-over"),
    pytest.param("max_gpu_units", "99999999", "from 0 to 1,000", id="units-absurd-string"),
    pytest.param("gpu_hours_per_period", 1e9, "from 0 to 1,000,000", id="hours-over"),
    pytest.param("gpu_hours_per_period", "1e300", "from 0 to 1,000,000", id="hours-absurd-exponent"),
    pytest.param("max_session_hours", 8761, "more than 0 and at most 8,760", id="session-over-a-year"),
    pytest.param("cpu_limit", 1025, "from 0.01 to 1,024", id="cpu-over"),
    pytest.param("cpu_limit", "0.001", "from 0.01 to 1,024", id="cpu-too-small-for-docker"),
    pytest.param("mem_limit", "65T", "from 6M to 64T", id="mem-over"),
    pytest.param("mem_limit", "5M", "from 6M to 64T", id="mem-under-docker-minimum"),
    pytest.param("mem_limit", 1024, "from 6M to 64T", id="mem-bytes-too-small"),
    pytest.param("max_named_servers", 5000, "from 0 to 1,000", id="named-over"),
    pytest.param("priority", 10**7, "from -1,000,000 to 1,000,000", id="priority-over"),
    pytest.param("priority", "-2000000", "from -1,000,000 to 1,000,000", id="priority-under"),
]


@pytest.mark.parametrize("field, value, allowed", OUT_OF_RANGE)
def test_parse_quota_refuses_values_out_of_range(field: str, value: Any, allowed: str) -> None:
    with pytest.raises(QuotaError) as exc:
        parse_quota({field: value}, "group 'students'")
    assert exc.value.field == field
    text = str(exc.value)
    assert text.startswith(f"{field}: {quotas._show(value)} is out of range: allowed {allowed}")
    assert text.endswith("(in group 'students')")
    assert ("'unlimited'" in text) == (field != "priority")


@pytest.mark.parametrize("field", sorted(quotas.BOUNDS))
def test_bounds_themselves_are_allowed(field: str) -> None:
    low, high = quotas.BOUNDS[field]
    for value in (high, low) if field != "max_session_hours" else (high, 0.001):
        value = int(value) if float(value).is_integer() else value
        assert parse_quota({field: value})[field] == value


@pytest.mark.parametrize(
    "where, raw",
    [
        ("group properties", [{"max_gpu_units": 2}, {"max_gpu_units": 10**6}]),
        ("user override", [{"max_gpu_units": 2}]),
    ],
    ids=["group", "override"],
)
def test_resolve_policy_refuses_an_absurd_group_or_override(where: str, raw: list[dict[str, Any]]) -> None:
    override = {"gpu_hours_per_period": 10**9} if where == "user override" else None
    with pytest.raises(QuotaError, match=where):
        resolve_policy({}, raw, override)


# ---- the one byte-size grammar (profiles' and quotas' mem_limit) ---------------------------

BYTES_OK = [
    pytest.param("4G", 4 * GIB, id="G"),
    pytest.param("4Gi", 4 * GIB, id="Gi"),
    pytest.param("4gib", 4 * GIB, id="gib-lowercase"),
    pytest.param("4GB", 4 * GIB, id="GB"),
    pytest.param(" 512 M ", 512 * 1024**2, id="spaces"),
    pytest.param("1.5T", 3 * 1024**4 // 2, id="fraction"),
    pytest.param("100k", 100 * 1024, id="k"),
    pytest.param("123b", 123, id="bytes-suffix"),
    pytest.param("123", 123, id="digits"),
    pytest.param(123, 123, id="int"),
    pytest.param(2.0**30, GIB, id="integral-float"),
]


@pytest.mark.parametrize("raw, expected", BYTES_OK)
def test_parse_bytes(raw: Any, expected: int) -> None:
    assert quotas.parse_bytes(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "G", "4X", "4 GiBs", "-4G", "0", "0G", "1e9", True, None, [4], 1.5, "4..5G"], ids=repr
)
def test_parse_bytes_refuses(raw: Any) -> None:
    with pytest.raises(ValueError, match="is not a memory size"):
        quotas.parse_bytes(raw)


@pytest.mark.parametrize("field, value, allowed", PARSE_BAD)
def test_parse_quota_rejects(field: str, value: Any, allowed: str) -> None:
    with pytest.raises(QuotaError) as exc:
        parse_quota({field: value, "unrelated": "x"}, "group 'students'")
    text = str(exc.value)
    assert exc.value.field == field
    assert text.startswith(f"{field}: ")
    assert quotas._show(value) in text
    assert allowed in text
    assert text.endswith("(in group 'students')")


def test_quota_error_message_matches_the_documented_form() -> None:
    with pytest.raises(QuotaError, match=r"^max_gpu_units: 'two' is not a whole number ≥ 0"):
        parse_quota({"max_gpu_units": "two"})


@pytest.mark.parametrize("raw", [None, ["max_gpu_units"], "max_gpu_units=1"], ids=["none", "list", "str"])
def test_parse_quota_needs_a_mapping(raw: Any) -> None:
    with pytest.raises(QuotaError, match="^quota: .* is not a mapping"):
        parse_quota(raw)


# ---- validate_quota_edit -------------------------------------------------------------


def test_validate_quota_edit_accepts_known_fields() -> None:
    raw = {"max_gpu_units": "1", "period": "day", "allowed_profiles": "cpu"}
    assert validate_quota_edit(raw) == {
        "max_gpu_units": 1,
        "period": "day",
        "allowed_profiles": frozenset({"cpu"}),
    }


@pytest.mark.parametrize("key", ["max_gpus", "description", "Max_GPU_Units"])
def test_validate_quota_edit_rejects_unknown_keys(key: str) -> None:
    with pytest.raises(QuotaError) as exc:
        validate_quota_edit({"max_gpu_units": 1, key: 2})
    assert exc.value.field == key
    assert str(exc.value).startswith(f"{key}: is not a quota field; known fields: allowed_profiles")


def test_validate_quota_edit_checks_values_and_type() -> None:
    with pytest.raises(QuotaError, match="^cpu_limit: 'lots'"):
        validate_quota_edit({"cpu_limit": "lots"})
    with pytest.raises(QuotaError, match="^quota: "):
        validate_quota_edit([("cpu_limit", 1)])  # type: ignore[arg-type]


# ---- resolve_policy ------------------------------------------------------------------

RESOLVE = [
    pytest.param({}, [], None, QuotaPolicy(), id="nothing-set"),
    pytest.param(
        {
            "max_gpu_units": "1",
            "gpu_hours_per_period": "2",
            "allowed_profiles": "shared, cpu",
            "mem_limit": "4G",
        },
        [],
        None,
        QuotaPolicy(
            allowed_profiles=frozenset({"shared", "cpu"}),
            max_gpu_units=1,
            gpu_hours_per_period=2.0,
            mem_limit=4 * GIB,
        ),
        id="defaults-only",
    ),
    pytest.param(
        {"max_gpu_units": 1, "gpu_hours_per_period": 2},
        [{"max_gpu_units": "3"}],
        None,
        QuotaPolicy(max_gpu_units=3, gpu_hours_per_period=2.0),
        id="one-group-sets-one-field",
    ),
    pytest.param(
        {"max_gpu_units": 2},
        [{"max_gpu_units": "1"}],
        None,
        QuotaPolicy(max_gpu_units=1),
        id="group-replaces-default-even-if-stricter",
    ),
    pytest.param(
        {"max_gpu_units": 1, "cpu_limit": 2},
        [
            {"max_gpu_units": 1, "allowed_profiles": "cpu", "gpu_hours_per_period": 2, "priority": 1},
            {"max_gpu_units": 2, "allowed_profiles": "mig-1g-10gb", "gpu_hours_per_period": 1, "priority": 5},
        ],
        None,
        QuotaPolicy(
            allowed_profiles=frozenset({"cpu", "mig-1g-10gb"}),
            max_gpu_units=2,
            gpu_hours_per_period=2.0,
            cpu_limit=2.0,
            priority=5,
        ),
        id="two-groups-most-permissive",
    ),
    pytest.param(
        {},
        [
            {"max_gpu_units": 3, "allowed_profiles": "cpu", "mem_limit": "8G", "max_session_hours": 4},
            {
                "max_gpu_units": "unlimited",
                "allowed_profiles": "*",
                "mem_limit": None,
                "max_session_hours": 2,
            },
        ],
        None,
        QuotaPolicy(max_session_hours=4.0),
        id="none-unlimited-beats-numbers",
    ),
    pytest.param(
        {"max_named_servers": 2},
        [{"max_named_servers": 0}, {"cpu_limit": 1}],
        None,
        QuotaPolicy(max_named_servers=0, cpu_limit=1.0),
        id="group-not-setting-field-has-no-say",
    ),
    pytest.param(
        {"period": "week"},
        [{"gpu_hours_per_period": 10, "period": "month"}, {"gpu_hours_per_period": 2, "period": "day"}],
        None,
        QuotaPolicy(gpu_hours_per_period=10.0, period="month"),
        id="period-follows-largest-budget",
    ),
    pytest.param(
        {"period": "week"},
        [{"gpu_hours_per_period": 2, "period": "day"}, {"gpu_hours_per_period": 2, "period": "month"}],
        None,
        QuotaPolicy(gpu_hours_per_period=2.0, period="day"),
        id="period-budget-tie-first-group",
    ),
    pytest.param(
        {"period": "week"},
        [{"gpu_hours_per_period": 20}, {"gpu_hours_per_period": 2, "period": "day"}],
        None,
        QuotaPolicy(gpu_hours_per_period=20.0, period="week"),
        id="period-winner-without-period-keeps-default",
    ),
    pytest.param(
        {},
        [{"priority": 3}, {"period": "day"}, {"period": "month"}],
        None,
        QuotaPolicy(period="day", priority=3),
        id="period-without-budgets-first-group",
    ),
    pytest.param(
        {"max_gpu_units": 1},
        [{"max_gpu_units": 2, "gpu_hours_per_period": 5}],
        {"max_gpu_units": "0", "priority": "100"},
        QuotaPolicy(max_gpu_units=0, gpu_hours_per_period=5.0, priority=100),
        id="user-override-wins-field-by-field",
    ),
    pytest.param(
        {"max_gpu_units": 1},
        [{"max_gpu_units": 2}],
        {"max_gpu_units": None, "note": "teaching assistant"},
        QuotaPolicy(max_gpu_units=None),
        id="user-override-unlimited",
    ),
    pytest.param(
        {"max_gpu_units": 1},
        [{"max_gpu_units": 2}],
        {},
        QuotaPolicy(max_gpu_units=2),
        id="empty-user-override",
    ),
    pytest.param(
        {"cpu_limit": 2},
        [
            {"description": "GitHub team workshop", "colour": "#fff", "sponsor": {"name": "x"}},
            {"max_gpu_units": "1", "jupyterhub.note": ["a"]},
        ],
        None,
        QuotaPolicy(max_gpu_units=1, cpu_limit=2.0),
        id="unrelated-group-properties-ignored",
    ),
]


@pytest.mark.parametrize("defaults, groups, override, expected", RESOLVE)
def test_resolve_policy(
    defaults: dict[str, Any],
    groups: list[dict[str, Any]],
    override: dict[str, Any] | None,
    expected: QuotaPolicy,
) -> None:
    assert resolve_policy(defaults, groups, override) == expected


@pytest.mark.parametrize(
    "defaults, groups, override, where",
    [
        pytest.param({"max_gpu_units": "x"}, [], None, "defaults", id="defaults"),
        pytest.param({}, [{}, {"cpu_limit": "0"}], None, "group properties #2", id="second-group"),
        pytest.param({}, [], {"period": "year"}, "user override", id="override"),
    ],
)
def test_resolve_policy_names_where_a_bad_value_is(
    defaults: dict[str, Any], groups: list[dict[str, Any]], override: dict[str, Any] | None, where: str
) -> None:
    with pytest.raises(QuotaError, match=rf"\(in {where}\)$"):
        resolve_policy(defaults, groups, override)


@pytest.mark.parametrize(
    "policy, slug, allowed",
    [
        pytest.param(QuotaPolicy(), "anything", True, id="none-allows-all"),
        pytest.param(QuotaPolicy(allowed_profiles=frozenset({"cpu"})), "cpu", True, id="listed"),
        pytest.param(QuotaPolicy(allowed_profiles=frozenset({"cpu"})), "shared", False, id="not-listed"),
        pytest.param(QuotaPolicy(allowed_profiles=frozenset()), "cpu", False, id="empty-allows-none"),
    ],
)
def test_allows_profile(policy: QuotaPolicy, slug: str, allowed: bool) -> None:
    assert policy.allows_profile(slug) is allowed


# ---- period_bounds -------------------------------------------------------------------

PERIOD_CASES = [
    pytest.param(utc(2026, 11, 18, 13, 45), "day", utc(2026, 11, 18), utc(2026, 11, 19), id="day"),
    pytest.param(utc(2026, 11, 18), "day", utc(2026, 11, 18), utc(2026, 11, 19), id="day-at-midnight"),
    pytest.param(utc(2026, 12, 31, 23, 59), "day", utc(2026, 12, 31), utc(2027, 1, 1), id="day-new-year"),
    pytest.param(utc(2026, 11, 18, 9), "week", utc(2026, 11, 16), utc(2026, 11, 23), id="week-wednesday"),
    pytest.param(
        utc(2026, 11, 22, 23, 59, 59),
        "week",
        utc(2026, 11, 16),
        utc(2026, 11, 23),
        id="week-sunday-last-second",
    ),
    pytest.param(utc(2026, 11, 23), "week", utc(2026, 11, 23), utc(2026, 11, 30), id="week-monday-midnight"),
    pytest.param(
        utc(2026, 12, 31, 12), "week", utc(2026, 12, 28), utc(2027, 1, 4), id="week-across-new-year"
    ),
    pytest.param(utc(2026, 11, 18, 9), "month", utc(2026, 11, 1), utc(2026, 12, 1), id="month"),
    pytest.param(utc(2026, 12, 31, 23, 59), "month", utc(2026, 12, 1), utc(2027, 1, 1), id="month-december"),
    pytest.param(utc(2027, 1, 1), "month", utc(2027, 1, 1), utc(2027, 2, 1), id="month-first-instant"),
    pytest.param(utc(2028, 2, 29, 8), "month", utc(2028, 2, 1), utc(2028, 3, 1), id="month-leap-february"),
    pytest.param(utc(2026, 11, 18), "total", datetime.min.replace(tzinfo=UTC), None, id="total-never-resets"),
    pytest.param(
        datetime(2026, 11, 22, 23, 30), "week", utc(2026, 11, 16), utc(2026, 11, 23), id="naive-is-utc"
    ),
    pytest.param(
        datetime(2026, 11, 23, 1, 0, tzinfo=timezone(timedelta(hours=2))),
        "week",
        utc(2026, 11, 16),
        utc(2026, 11, 23),
        id="other-timezone-converted-to-utc",
    ),
]


@pytest.mark.parametrize("now, period, start, end", PERIOD_CASES)
def test_period_bounds(now: datetime, period: str, start: datetime, end: datetime | None) -> None:
    got_start, got_end = period_bounds(now, period)
    assert (got_start, got_end) == (start, end)
    assert got_start.tzinfo is not None and got_start.utcoffset() == timedelta(0)
    if period != "total":
        assert got_start <= now.replace(tzinfo=now.tzinfo or UTC) < got_end  # type: ignore[operator]


def test_period_bounds_rejects_unknown_period() -> None:
    with pytest.raises(QuotaError, match="^period: 'year' is not one of day, week, month, total"):
        period_bounds(utc(2026, 11, 18), "year")


# ---- budget_left_seconds -------------------------------------------------------------


@pytest.mark.parametrize(
    "hours, used, left",
    [
        pytest.param(None, 10**9, None, id="unlimited"),
        pytest.param(2.0, 1800, 5400.0, id="some-left"),
        pytest.param(2.0, 7200, 0.0, id="exactly-used"),
        pytest.param(2.0, 9000, 0.0, id="overdrawn-is-zero"),
        pytest.param(0.0, 0, 0.0, id="no-budget"),
    ],
)
def test_budget_left_seconds(hours: float | None, used: float, left: float | None) -> None:
    assert budget_left_seconds(QuotaPolicy(gpu_hours_per_period=hours), used) == left


@pytest.mark.parametrize(
    "policy, used, since, resets, left, notice",
    [
        pytest.param(QuotaPolicy(gpu_hours_per_period=10), 3 * 3600, utc(2026, 11, 16), utc(2026, 11, 23),
                     7 * 3600.0, "GPU time left this week: 7.0 h of 10 h.", id="week"),
        pytest.param(QuotaPolicy(gpu_hours_per_period=0.5, period="day"), 3600, utc(2026, 11, 18),
                     utc(2026, 11, 19), 0.0, "GPU time left today: 0.0 h of 0.5 h.", id="day-overdrawn"),
        pytest.param(QuotaPolicy(gpu_hours_per_period=2, period="total"), 0, datetime.min.replace(tzinfo=timezone.utc),
                     None, 7200.0, "GPU time left in total: 2.0 h of 2 h.", id="total-never-resets"),
        pytest.param(QuotaPolicy(period="month"), 10**6, utc(2026, 11, 1), utc(2026, 12, 1), None, "",
                     id="unlimited"),
    ],
)
def test_budget_view_is_what_every_process_shows(
    policy: QuotaPolicy, used: float, since: datetime, resets: datetime | None, left: float | None, notice: str
) -> None:
    now = utc(2026, 11, 18, 14, 30)
    view = quotas.budget_view(policy, used, now)
    assert (view.period, view.since, view.resets_at, view.used_seconds) == (policy.period, since, resets, used)
    assert view.left_seconds == left == budget_left_seconds(policy, used)
    assert view.notice() == notice
    assert quotas.budget_since(policy, now) == since


# ---- check_spawn ---------------------------------------------------------------------

NOW = utc(2026, 11, 18, 14, 30)  # a Wednesday
ALLOWED = frozenset({"mig-1g-10gb", "cpu"})
LIMITED = QuotaPolicy(allowed_profiles=ALLOWED, max_gpu_units=1, gpu_hours_per_period=2.0)

SPAWN_CASES = [
    pytest.param(QuotaPolicy(), "gpu", True, 5, 10**7, Decision(True), id="no-limits"),
    pytest.param(LIMITED, "mig-1g-10gb", True, 0, 0, Decision(True), id="within-quota"),
    pytest.param(LIMITED, "mig-1g-10gb", True, 0, 7199.5, Decision(True), id="just-under-budget"),
    pytest.param(
        LIMITED,
        "gpu",
        True,
        0,
        0,
        Decision(
            False, "forbidden-profile", "You may not use the profile 'gpu'. Choose one of: cpu, mig-1g-10gb."
        ),
        id="forbidden-lists-allowed-only",
    ),
    pytest.param(
        QuotaPolicy(allowed_profiles=frozenset()),
        "cpu",
        False,
        0,
        0,
        Decision(False, "forbidden-profile", "You may not use the profile 'cpu'. Ask the hub's admin."),
        id="forbidden-nothing-allowed",
    ),
    pytest.param(
        QuotaPolicy(allowed_profiles=frozenset({"cpu"}), max_gpu_units=0, gpu_hours_per_period=0),
        "shared",
        True,
        3,
        10**6,
        Decision(False, "forbidden-profile", "You may not use the profile 'shared'. Choose one of: cpu."),
        id="forbidden-checked-first",
    ),
    pytest.param(
        LIMITED,
        "mig-1g-10gb",
        True,
        1,
        0,
        Decision(
            False,
            "quota-exceeded",
            "You already hold 1 GPU unit, the most your quota allows. "
            "Stop another GPU server first, or start a CPU-only server.",
        ),
        id="units-at-limit",
    ),
    pytest.param(
        QuotaPolicy(max_gpu_units=2),
        "gpu",
        True,
        3,
        0,
        Decision(
            False,
            "quota-exceeded",
            "You already hold 3 GPU units; your quota allows 2. "
            "Stop another GPU server first, or start a CPU-only server.",
        ),
        id="units-over-a-lowered-limit",
    ),
    pytest.param(
        QuotaPolicy(max_gpu_units=0),
        "gpu",
        True,
        0,
        0,
        Decision(
            False, "quota-exceeded", "Your quota allows no GPU servers. Start a CPU-only server instead."
        ),
        id="units-zero",
    ),
    pytest.param(
        LIMITED,
        "mig-1g-10gb",
        True,
        1,
        10**6,
        Decision(
            False,
            "quota-exceeded",
            "You already hold 1 GPU unit, the most your quota allows. "
            "Stop another GPU server first, or start a CPU-only server.",
        ),
        id="units-checked-before-budget",
    ),
    pytest.param(
        LIMITED,
        "mig-1g-10gb",
        True,
        0,
        7200,
        Decision(
            False,
            "quota-exceeded",
            "You have used your 2 GPU-hours for this week; it resets on Monday 2026-11-23 00:00 UTC. "
            "A CPU-only server is still available.",
            utc(2026, 11, 23),
        ),
        id="budget-week",
    ),
    pytest.param(
        QuotaPolicy(gpu_hours_per_period=1, period="day"),
        "gpu",
        True,
        0,
        4000,
        Decision(
            False,
            "quota-exceeded",
            "You have used your 1 GPU-hour for today; it resets on Thursday 2026-11-19 00:00 UTC. "
            "A CPU-only server is still available.",
            utc(2026, 11, 19),
        ),
        id="budget-day-singular",
    ),
    pytest.param(
        QuotaPolicy(gpu_hours_per_period=1.5, period="month"),
        "gpu",
        True,
        0,
        5400,
        Decision(
            False,
            "quota-exceeded",
            "You have used your 1.5 GPU-hours for this month; it resets on Tuesday 2026-12-01 00:00 UTC. "
            "A CPU-only server is still available.",
            utc(2026, 12, 1),
        ),
        id="budget-month-fraction",
    ),
    pytest.param(
        QuotaPolicy(gpu_hours_per_period=40, period="total"),
        "gpu",
        True,
        0,
        40 * 3600,
        Decision(
            False,
            "quota-exceeded",
            "You have used your 40 GPU-hours in total; ask the hub's admin for more. "
            "A CPU-only server is still available.",
        ),
        id="budget-total-never-resets",
    ),
    pytest.param(
        QuotaPolicy(gpu_hours_per_period=0),
        "gpu",
        True,
        0,
        0,
        Decision(
            False, "quota-exceeded", "Your quota gives you no GPU time. Start a CPU-only server instead."
        ),
        id="budget-zero",
    ),
]


@pytest.mark.parametrize("policy, slug, gpu, held, used, expected", SPAWN_CASES)
def test_check_spawn(
    policy: QuotaPolicy, slug: str, gpu: bool, held: int, used: float, expected: Decision
) -> None:
    assert check_spawn(policy, slug, gpu, held, used, NOW) == expected


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(QuotaPolicy(max_gpu_units=0), id="no-units"),
        pytest.param(QuotaPolicy(max_gpu_units=1), id="units-held"),
        pytest.param(QuotaPolicy(gpu_hours_per_period=0), id="no-budget"),
        pytest.param(QuotaPolicy(gpu_hours_per_period=2, period="total"), id="budget-spent"),
        pytest.param(
            QuotaPolicy(allowed_profiles=ALLOWED, max_gpu_units=0, gpu_hours_per_period=0),
            id="everything-at-zero",
        ),
    ],
)
def test_cpu_profiles_are_never_refused_for_gpu_limits(policy: QuotaPolicy) -> None:
    assert check_spawn(policy, "cpu", False, 4, 10**8, NOW) == Decision(True)


def test_resolved_policy_feeds_check_spawn() -> None:
    policy = resolve_policy(
        {"allowed_profiles": "cpu", "max_gpu_units": 0},
        [{"allowed_profiles": "mig-1g-10gb, cpu", "max_gpu_units": "1", "gpu_hours_per_period": "2"}],
        None,
    )
    assert check_spawn(policy, "mig-1g-10gb", True, 0, 0, NOW).ok
    refused = check_spawn(policy, "mig-1g-10gb", True, 0, 7200, NOW)
    assert refused.reason == "quota-exceeded" and refused.resets_at == utc(2026, 11, 23)


# ---- properties ----------------------------------------------------------------------

if HAVE_HYPOTHESIS:
    _scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=12)
        | st.sampled_from(["", " ", "2", "-1", "1.5", "1e400", ".5", "unlimited", "None", "*", "4G", "512m"])
        | st.sampled_from(["4GB", "[", "[1]", '["cpu"]', "cpu, shared", "Week", "nan", "inf", "0", "+3"])
    )
    _values = st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=6,
    )
    _raws = st.dictionaries(st.sampled_from(quotas.FIELDS) | st.text(max_size=8), _values, max_size=6)

    @settings(max_examples=300, deadline=None)
    @given(_raws)
    def test_parse_quota_raises_only_quota_error(raw: dict[str, Any]) -> None:
        try:
            parsed = parse_quota(raw, "group 'g'")
        except QuotaError as exc:
            assert exc.field in quotas.FIELDS and str(exc).startswith(exc.field + ": ")
            return
        assert set(parsed) <= set(quotas.FIELDS)
        policy = resolve_policy({}, [raw], raw)
        assert isinstance(policy, QuotaPolicy)
        check_spawn(policy, "cpu", True, 0, 0.0, NOW)

    @settings(max_examples=300, deadline=None)
    @given(_raws)
    def test_validate_quota_edit_raises_only_quota_error(raw: dict[str, Any]) -> None:
        try:
            parsed = validate_quota_edit(raw)
        except QuotaError as exc:
            assert str(exc).startswith(exc.field + ": ")
            return
        assert set(raw) <= set(quotas.FIELDS) and set(parsed) <= set(raw)

    _units = st.none() | st.integers(min_value=0, max_value=8)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.dictionaries(st.just("max_gpu_units"), _units), min_size=1, max_size=4), _units)
    def test_another_group_never_makes_the_policy_stricter(groups: list[dict[str, Any]], extra: Any) -> None:
        def looser_or_equal(a: int | None, b: int | None) -> bool:
            return a is None or (b is not None and a >= b)

        before = resolve_policy({"max_gpu_units": 1}, groups, None).max_gpu_units
        after = resolve_policy({"max_gpu_units": 1}, [*groups, {"max_gpu_units": extra}], None).max_gpu_units
        assert looser_or_equal(after, before) or not any(groups)

else:  # pragma: no cover

    @pytest.mark.skip(reason="hypothesis is not installed (it is in the test extra)")
    def test_parse_quota_raises_only_quota_error() -> None:
        pass
