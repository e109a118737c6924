"""The one byte-size grammar of gpuhub: every size (profile and quota ``mem_limit``, default
limits, tutorial caps) is read here (pure, no JupyterHub import).

It is JupyterHub's own grammar (``jupyterhub.traitlets.ByteSpecification``, which reads
``Spawner.mem_limit``), so a size that passes gpuhub's start check is one the spawn reads the
same way: a number of bytes (``8388608``, ``1.5e9``), or a string of a number followed by one of
the upper-case units ``K``, ``M``, ``G``, ``T`` (1024-based: ``"512M"``, ``"4G"``, ``"1.5T"``).
There is no ``Gi``, ``GB``, lower case or bare digit string; the error says what to write.

Values written before gpuhub had one grammar (``"4Gi"``, ``"4GB"``, ``"512m"``, ``"8388608"``
in group properties, quota overrides and the deprecated ``GPUHUB_*`` variables) are still read
for one release by :func:`read_size`, as the same number of bytes; ``gpuhub.yaml`` takes only
:func:`parse_size`'s grammar, and :func:`suggestion` says how to write an old form in it.

The one deliberate difference: booleans are not sizes here (``ByteSpecification`` reads
``True`` as 1 byte); that is stricter, so it never lets through what the spawn would refuse.
``tests/core/test_sizes.py`` checks the two agree on many generated inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

#: the units, as JupyterHub's ByteSpecification reads them
UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

#: what the messages say is accepted
FORMS = "a number of bytes, or a number followed by K, M, G or T (1024-based) such as '512M' or '1.5T'"

# the forms gpuhub read before (deprecated): digits with an optional k/m/g/t, i and b in any case
_LEGACY = re.compile(r"^([0-9]{1,20}(?:\.[0-9]{1,9})?)\s*(?:([kmgt])(i?)b?|b)?$", re.IGNORECASE)


class SizeError(ValueError):
    """A value that is not a size; the message shows it, the accepted forms and a fix."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggestion(value: Any) -> str | None:
    """``'4G'`` for ``"4Gi"``, ``"4gb"``, ``"4 GiB"``; ``'512M'`` for digits of bytes that divide; else None."""
    match = _LEGACY.match(value.strip()) if isinstance(value, str) else None
    if not match:
        return None
    digits, unit, _binary = match.groups()
    if unit:
        return f"{digits}{unit.upper()}"
    if "." in digits:
        return None
    number = int(digits)
    for unit, size in reversed(UNITS.items()):
        if number >= size and number % size == 0:
            return f"{number // size}{unit}"
    return digits  # as a number, not a string


def read_size(value: Any) -> int:
    """Bytes of ``value``: :func:`parse_size`, or (deprecated, for one release) a form gpuhub read
    before it had one grammar, such as ``"4Gi"``, ``"4GB"``, ``"512m"``, ``"123b"`` or ``"8388608"``.

    For values already stored where gpuhub.yaml cannot reach them (group properties, quota
    overrides) and the deprecated environment variables; they mean the same bytes as before.
    """
    try:
        return parse_size(value)
    except SizeError:
        match = _LEGACY.match(value.strip()) if isinstance(value, str) else None
        if not match:
            raise
    digits, unit, _binary = match.groups()
    return int(float(digits) * (UNITS[unit.upper()] if unit else 1))


def size_error(value: Any) -> SizeError:
    """The one message for a value that is not a size."""
    fix = suggestion(value)
    hint = f"; write {fix}" if fix else ""
    if fix and fix.isdigit():
        hint = f"; write the number {fix} without quotes"
    return SizeError(f"{_show(value)} is not a memory size such as '4G'{hint} (sizes are {FORMS})")


def parse_size(value: Any) -> int:
    """Bytes of ``value`` read exactly as JupyterHub's ByteSpecification reads it, or SizeError.

    Numbers are cut to whole bytes (``1.5`` is 1); negative numbers pass the grammar (use
    :func:`check_size` for a range). NaN and infinity are refused (ByteSpecification crashes on them).
    """
    if isinstance(value, bool):
        raise size_error(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise size_error(value)
        return int(value)
    if not isinstance(value, str) or not value or value[-1] not in UNITS:
        raise size_error(value)
    try:
        number = float(value[:-1]) * UNITS[value[-1]]
    except ValueError:
        raise size_error(value) from None
    if not math.isfinite(number):
        raise size_error(value)
    return int(number)


def format_size(number: float) -> str:
    """``6M``, ``64T``: a byte count in the largest unit that divides it (else ``N bytes``)."""
    for unit, size in reversed(UNITS.items()):
        if number >= size and number % size == 0:
            return f"{number // size:g}{unit}"
    return f"{number:g} bytes"


def check_size(value: Any, low: int, high: int | None = None, read: Callable[[Any], int] = parse_size) -> int:
    """Bytes of ``value`` (``read`` by :func:`parse_size`) from ``low`` to ``high`` inclusive, or SizeError."""
    number = read(value)
    if number < low or (high is not None and number > high):
        allowed = f"from {format_size(low)} to {format_size(high)}" if high is not None else f"at least {format_size(low)}"
        raise SizeError(f"{_show(value)} is out of range: allowed {allowed}")
    return number
