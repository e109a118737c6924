"""The one byte-size grammar (gpuhub_spawner/core/sizes.py) reads exactly what JupyterHub's
``ByteSpecification`` (``Spawner.mem_limit``) reads: a size that passes gpuhub's check never
fails at spawn, and one that the spawn would read is never refused for its form."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jupyterhub.traitlets import ByteSpecification

from gpuhub_spawner.core import sizes
from gpuhub_spawner.core.sizes import SizeError, check_size, parse_size

G = 1024**3


def jupyterhub_reads(value: Any) -> tuple[bool, int | None]:
    """(accepted, bytes) as JupyterHub's own trait reads ``value``; any exception is a refusal."""
    try:
        return True, ByteSpecification().validate(None, value)
    except Exception:  # noqa: BLE001 - TraitError, or the ValueError/OverflowError it lets escape
        return False, None


def gpuhub_reads(value: Any) -> tuple[bool, int | None]:
    try:
        return True, parse_size(value)
    except SizeError:
        return False, None


OK = [
    pytest.param("4G", 4 * G, id="G"),
    pytest.param("512M", 512 * 1024**2, id="M"),
    pytest.param("1.5T", 3 * 1024**4 // 2, id="fraction"),
    pytest.param("100K", 100 * 1024, id="K"),
    pytest.param(" 4G", 4 * G, id="space-before"),
    pytest.param("4 G", 4 * G, id="space-before-unit"),
    pytest.param("1e3K", 1000 * 1024, id="exponent"),
    pytest.param(8388608, 8388608, id="int"),
    pytest.param(1.5e9, 1_500_000_000, id="float"),
    pytest.param(2.7, 2, id="float-cut"),
]


@pytest.mark.parametrize("value, expected", OK)
def test_sizes_read_as_jupyterhub_reads_them(value: Any, expected: int) -> None:
    assert parse_size(value) == expected
    assert jupyterhub_reads(value) == (True, expected)


REFUSED = [
    pytest.param("4Gi", "write 4G", id="Gi"),
    pytest.param("4GB", "write 4G", id="GB"),
    pytest.param("4 GiB", "write 4G", id="GiB-spaced"),
    pytest.param("512m", "write 512M", id="lowercase"),
    pytest.param("8388608", "write 8M", id="digit-string"),
    pytest.param("8388607", "write the number 8388607 without quotes", id="digit-string-odd"),
    pytest.param("4 gigs", "sizes are a number of bytes", id="word"),
    pytest.param("", "sizes are", id="empty"),
    pytest.param("G", "sizes are", id="unit-only"),
    pytest.param("nanG", "sizes are", id="nan"),
    pytest.param("1e400G", "sizes are", id="overflow"),
    pytest.param(float("inf"), "sizes are", id="inf"),
    pytest.param(None, "sizes are", id="none"),
    pytest.param([4], "sizes are", id="list"),
]


@pytest.mark.parametrize("value, fix", REFUSED)
def test_not_a_size_says_the_forms_and_the_fix(value: Any, fix: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(value)
    message = str(info.value)
    assert message.startswith(f"{value!r} is not a memory size such as '4G'"), message
    assert fix in message and "K, M, G or T (1024-based)" in message, message
    assert jupyterhub_reads(value)[0] is False


def test_booleans_are_not_sizes_though_jupyterhub_reads_true_as_one_byte() -> None:
    """The one deliberate difference, and it is stricter: never lets through what a spawn refuses."""
    with pytest.raises(SizeError):
        parse_size(True)
    assert jupyterhub_reads(True) == (True, 1)


def test_check_size_says_the_range_in_units() -> None:
    assert check_size("6M", 6 * 1024**2, 64 * 1024**4) == 6 * 1024**2
    with pytest.raises(SizeError, match=r"^'1M' is out of range: allowed from 6M to 64T$"):
        check_size("1M", 6 * 1024**2, 64 * 1024**4)
    with pytest.raises(SizeError, match=r"^-1 is out of range: allowed at least 1 bytes$"):
        check_size(-1, 1)


_size_like = st.builds(
    lambda sign, number, space, unit: f"{sign}{number}{space}{unit}",
    st.sampled_from(["", "+", "-", " "]),
    st.one_of(
        st.integers(0, 10**6).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["1_0", "1__0", "_1", ".5", "5.", "1e3", "1E-3", "inf", "nan", "١٢", "0x10", ""]),
    ),
    st.sampled_from(["", " ", "\t", "\u00a0"]),
    st.sampled_from(["K", "M", "G", "T", "k", "m", "g", "t", "Gi", "GB", "B", "", "X", " ", "Ｇ"]),
)


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        _size_like,
        st.text(max_size=10),
        st.integers(),
        st.floats(),
        st.none(),
        st.lists(st.integers(), max_size=2),
        st.binary(max_size=4),
    )
)
@example("4Gi")
@example("  7.25e2  T")
@example("1e308K")
def test_the_grammar_is_jupyterhubs(value: Any) -> None:
    assert gpuhub_reads(value) == jupyterhub_reads(value)


def test_forms_named_in_every_message() -> None:
    assert sizes.FORMS in str(sizes.size_error("x"))


LEGACY = [
    pytest.param("4Gi", 4 * G, "4G", id="Gi"),
    pytest.param("4gib", 4 * G, "4G", id="gib"),
    pytest.param("4GB", 4 * G, "4G", id="GB"),
    pytest.param(" 512 m ", 512 * 1024**2, "512M", id="lowercase-spaced"),
    pytest.param("1.5t", 3 * 1024**4 // 2, "1.5T", id="fraction"),
    pytest.param("123b", 123, "123", id="b"),
    pytest.param("8388608", 8 * 1024**2, "8M", id="digits"),
]


@pytest.mark.parametrize("value, expected, fix", LEGACY)
def test_old_forms_are_read_for_one_release_and_the_fix_is_their_new_form(value: str, expected: int, fix: str):
    """Group properties and deprecated variables written before: the same bytes as before, and
    the suggested new form reads as the same bytes in the one grammar."""
    assert sizes.read_size(value) == expected
    assert sizes.suggestion(value) == fix
    assert parse_size(fix if not fix.isdigit() else int(fix)) == expected


@pytest.mark.parametrize("value", ["4X", "4iG", "four G", "-4G", "1e9", "4..5G", True, None, [4], ""], ids=repr)
def test_read_size_refuses_what_neither_grammar_reads(value: Any) -> None:
    try:
        number = sizes.read_size(value)
    except SizeError:
        return
    assert value == "-4G" and number < 0  # the one grammar reads a sign; ranges refuse it
