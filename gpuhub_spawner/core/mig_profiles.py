"""MIG profile names: parse, recognise, derive, and carry through swarm kind names (pure: no I/O).

A MIG profile is named ``<g>g.<mem>gb`` (``1g.10gb``, ``3g.40gb``) with optional parts:

- a compute-instance prefix ``<c>c.`` (``1c.3g.40gb``): one compute instance of a ``3g.40gb``
  GPU instance that other compute instances may share.  It has its own SMs but NOT its own
  memory: every compute instance of the GPU instance uses the same memory.
- a media-engine suffix: ``+me`` (the instance owns a media engine), ``-me`` (none, NVML's
  ``NO_ME`` profiles), ``+me.all`` and the like on newer GPUs, ``+gfx``.

The memory part is nominal: a ``3g.40gb`` instance has 40192 MiB ("39.25 GiB"), so a name cannot
be computed by rounding the memory (that gave ``3g.39gb``).  The driver's own name is used
where it can be had (the device name on recent drivers, the GPU-instance profile table);
:func:`derive_profile` is the last resort, and its caller says so in the log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

#: a profile name as nvidia-smi prints it
PROFILE_RE = re.compile(r"^(?:([0-9]+)c\.)?([0-9]+)g\.([0-9]+)gb(?:([+-])([a-z]+(?:\.[a-z]+)*))?$")
_IN_DEVICE_NAME = re.compile(r"\bMIG\s+((?:[0-9]+c\.)?[0-9]+g\.[0-9]+gb(?:[+-][a-z]+(?:\.[a-z]+)*)?)(?:\s|$)")
#: the word a ``-`` suffix becomes in a kind name (``1g.10gb-me`` -> ``..._NO_ME``, as NVML names it)
_MINUS_WORD = "no"


def is_profile(name: str) -> bool:
    return PROFILE_RE.match(name) is not None


def profile_in_device_name(device_name: str) -> str:
    """The profile in a MIG device's name ("NVIDIA H100 80GB HBM3 MIG 3g.40gb"), or ''."""
    m = _IN_DEVICE_NAME.search(device_name)
    return m.group(1) if m else ""


def memory_isolated(profile: str) -> bool:
    """False for a compute-instance profile (``1c.3g.40gb``): it shares its GPU instance's memory."""
    m = PROFILE_RE.match(profile)
    return not (m and m.group(1))


def memory_sharers(profile: str) -> int:
    """How many compute instances may share the memory of a ``profile`` unit's GPU instance:
    ``1c.3g.40gb`` -> 3 (three 1-slice compute instances fit in a 3-slice GPU instance), 1 for a
    memory-isolated profile."""
    m = PROFILE_RE.match(profile)
    if not (m and m.group(1)):
        return 1
    return max(1, int(m.group(2)) // max(1, int(m.group(1))))


def with_compute_prefix(profile: str, gi_slices: int, ci_slices: int) -> str:
    """``3g.40gb`` -> ``1c.3g.40gb`` for a compute instance smaller than its GPU instance."""
    if 0 < ci_slices < gi_slices and memory_isolated(profile):
        return f"{ci_slices}c.{profile}"
    return profile


def gi_profile_name(raw: str) -> str:
    """A GPU-instance profile's name as NVML's profile info gives it ("MIG 1g.10gb") -> ``1g.10gb``."""
    name = raw.strip()
    return name[len("MIG ") :].strip() if name.startswith("MIG ") else name


def match_profile(rows: Iterable[tuple[int, int, str]], slices: int, memory_mb: int) -> list[str]:
    """Names of the profiles (``(slices, memory_mb, name)`` rows) a GPU instance could be.

    Several where profiles differ only in media engines (``1g.10gb`` and ``1g.10gb+me`` have the
    same slices and memory); plain names first.
    """
    names = {name for s, mem, name in rows if s == slices and mem == memory_mb and is_profile(name)}
    return sorted(names, key=lambda n: (PROFILE_RE.match(n).group(4) is not None, n))  # type: ignore[union-attr]


def derive_profile(slices: int, memory_mb: int, parent_total_mb: int | None) -> str:
    """A profile name computed from slices and memory: the LAST resort, which may be wrong.

    The nominal size is the instance's share of the GPU, rounded up to eighths, times the GPU's
    nominal size (how the names come about on A100/H100: 40192 MiB of an 81559 MiB H100 is 4/8
    of 80 GB: ``3g.40gb``).  Without the GPU's size, the memory rounded up to whole GB.
    """
    if parent_total_mb:
        share = math.ceil(memory_mb / parent_total_mb * 8 - 1e-9) / 8
        gb = round(share * math.ceil(parent_total_mb / 1024))
    else:
        gb = math.ceil(memory_mb / 1024)
    return f"{slices}g.{max(1, gb)}gb"


def kind_suffix(profile: str) -> str:
    """The part of a swarm kind name for a profile: ``1g.10gb`` -> ``1G_10GB``,
    ``1c.3g.40gb`` -> ``1C_3G_40GB``, ``1g.10gb+me`` -> ``1G_10GB_ME``, ``1g.10gb-me`` ->
    ``1G_10GB_NO_ME`` (kind names must be valid variable names: no ``.``, ``+``, ``-``)."""
    m = PROFILE_RE.match(profile)
    if not m:
        return re.sub(r"[^0-9A-Za-z]", "_", profile).upper()
    ci, gi, gb, sign, extra = m.groups()
    words = ([f"{ci}c"] if ci else []) + [f"{gi}g", f"{gb}gb"]
    if sign == "-":
        words.append(_MINUS_WORD)
    words += extra.split(".") if extra else []
    return "_".join(words).upper()


def profile_of_kind_suffix(suffix: str) -> str:
    """The inverse of :func:`kind_suffix`: ``1G_10GB_NO_ME`` -> ``1g.10gb-me``."""
    words = suffix.lower().split("_")
    end = next((i + 1 for i, w in enumerate(words) if re.fullmatch(r"[0-9]+gb", w)), len(words))
    base, rest = ".".join(words[:end]), words[end:]
    if not rest:
        return base
    if rest[0] == _MINUS_WORD and len(rest) > 1:
        return f"{base}-{'.'.join(rest[1:])}"
    return f"{base}+{'.'.join(rest)}"
