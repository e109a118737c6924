"""The NVIDIA container toolkit of a swarm node: its version, its runtime mode, and whether it
honours ``swarm-resource`` (pure parsing and one decision table; :func:`probe_version` is the
only I/O, one ``<runtime> --version``).

Why this exists: swarm hands a task its GPU only as ``DOCKER_RESOURCE_<KIND>=<uuid>``.  The
NVIDIA runtime turns that into devices where it reads the variables named by ``swarm-resource``
(in ``/etc/nvidia-container-runtime/config.toml``), which then win over
``NVIDIA_VISIBLE_DEVICES``.  Until 1.18 only the ``legacy`` mode (the runtime adds the
``nvidia-container-runtime-hook``, which reads them) did so, and ``mode = "auto"`` meant legacy.
Toolkit 1.18.0 made ``auto`` mean ``jit-cdi``, whose device selection read only
``NVIDIA_VISIBLE_DEVICES``: a CUDA image (``NVIDIA_VISIBLE_DEVICES=all``) saw every GPU of the
node, whatever swarm assigned (NVIDIA/nvidia-container-toolkit#1599, fixed in 1.19.0 and on the
1.18 branch after 1.18.2).  ``legacy`` still exists and still honours ``swarm-resource`` in every
version, so ``gpuhub node setup`` writes ``mode = "legacy"`` where the mode would otherwise be a
broken ``auto``/``jit-cdi``, and refuses where the operator chose ``cdi`` or ``csv`` (those need
their CDI specs or Tegra CSV files, so only the operator can choose to leave them).

The spawner fails closed as well: a named-kind service carries ``NVIDIA_VISIBLE_DEVICES=void``
(never ``none``: 1.18.0 and 1.18.1 treated ``none`` as ``all`` in jit-cdi mode), so a node this
check missed gives such a server no GPU rather than all of them.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass

#: the table and key of the runtime mode in config.toml
RUNTIME_TABLE = "nvidia-container-runtime"
#: first version of the 1.18 line whose non-legacy modes read ``swarm-resource``
FIXED_IN = (1, 18, 3)
#: 1.18.0 changed what ``mode = "auto"`` resolves to (from legacy to jit-cdi)
JIT_CDI_DEFAULT_SINCE = (1, 18, 0)
KNOWN_MODES = ("auto", "legacy", "jit-cdi", "cdi", "csv")

# "NVIDIA Container Runtime version 1.18.2", "NVIDIA Container Runtime Hook version 1.17.8",
# "NVIDIA Container Toolkit CLI version 1.19.0-rc.2" (each followed by "commit: …" lines)
_VERSION = re.compile(
    r"NVIDIA Container (?:Runtime(?: Hook)?|Toolkit CLI) version v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.~+-]+))?"
)


class ToolkitConfigError(Exception):
    """The runtime config cannot be read or changed safely; nothing was changed."""


@dataclass(frozen=True)
class ToolkitVersion:
    major: int
    minor: int
    patch: int
    pre: str = ""  # "rc.2" for a pre-release

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f"-{self.pre}" if self.pre else "")


@dataclass(frozen=True)
class Verdict:
    """What setup does about the runtime mode: ``ok`` (nothing), ``set-legacy`` or ``refuse``."""

    action: str
    reason: str


def parse_version(text: str) -> ToolkitVersion | None:
    """The toolkit version from ``nvidia-container-runtime --version`` (or the hook's, or
    ``nvidia-ctk --version``); None if the text names none."""
    m = _VERSION.search(text or "")
    if m is None:
        return None
    return ToolkitVersion(int(m[1]), int(m[2]), int(m[3]), m[4] or "")


def parse_runtime_config(text: str, path: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ToolkitConfigError(f"{path}: not valid TOML ({e}). Fix it; nothing was changed.") from None


def runtime_mode(config: dict) -> str:
    """``[nvidia-container-runtime] mode``; the toolkit's default when unset is ``auto``."""
    table = config.get(RUNTIME_TABLE)
    mode = table.get("mode", "auto") if isinstance(table, dict) else "auto"
    return str(mode)


def effective_mode(version: ToolkitVersion | None, mode: str) -> str:
    """The mode the runtime uses on a machine with NVML (Tegra's ``csv`` is not considered)."""
    if mode != "auto":
        return mode
    if version is None:
        return "unknown"
    return "jit-cdi" if version.release >= JIT_CDI_DEFAULT_SINCE else "legacy"


def reads_swarm_resource(version: ToolkitVersion | None, mode: str) -> bool:
    """Whether the runtime maps ``DOCKER_RESOURCE_*`` to devices in ``mode``."""
    resolved = effective_mode(version, mode)
    if resolved == "legacy":
        return True
    if version is None or resolved not in KNOWN_MODES:
        return False
    # a pre-release of 1.19.0 may predate the fix (it came in 1.19.0-rc.2)
    if version.pre and version.release == (1, 19, 0):
        return False
    return version.release >= FIXED_IN


def decide(version: ToolkitVersion | None, mode: str, runtime: str = "nvidia-container-runtime") -> Verdict:
    """The decision table (tests/node/test_toolkit.py lists it)."""
    if version is None:
        named = f"the NVIDIA container toolkit (no version from `{runtime} --version`)"
    else:
        named = f"NVIDIA container toolkit {version}"
    if reads_swarm_resource(version, mode):
        return Verdict("ok", f"{named}, mode {mode!r}: swarm-resource is honoured")
    resolved = effective_mode(version, mode)
    shown = f"{mode!r} ({resolved})" if mode == "auto" and version is not None else repr(mode)
    verb = "may ignore" if version is None else "ignores"
    ignored = (
        f"{named} in mode {shown} {verb} swarm-resource (before 1.18.3 only the legacy mode reads it, "
        "and 1.18.0 to 1.18.2 default to jit-cdi): a CUDA image (NVIDIA_VISIBLE_DEVICES=all) would see "
        "every GPU of this node, whatever swarm assigned"
    )
    if mode in ("auto", "jit-cdi"):
        return Verdict("set-legacy", ignored + '; setting mode = "legacy", which honours it in every version')
    return Verdict(
        "refuse",
        ignored + ". Upgrade the toolkit to 1.19.0 or later, or set mode = \"legacy\" under "
        f"[{RUNTIME_TABLE}] in the runtime config yourself, then run setup again. Nothing was changed.",
    )


_TABLE = re.compile(r"^\s*\[\[?([^\[\]]+)\]\]?\s*(?:#.*)?$")
_MODE = re.compile(r"^(\s*)mode\s*=.*$")


def set_legacy_mode(toml_text: str, path: str = "config.toml") -> str:
    """``toml_text`` with ``mode = "legacy"`` under ``[nvidia-container-runtime]``; every other
    line kept.  Checked by parsing the result: a layout this edit cannot handle (a dotted key, an
    inline table) stops setup instead of writing something else."""
    lines = toml_text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, x in enumerate(lines) if (m := _TABLE.match(x)) and m[1].strip() == RUNTIME_TABLE), None)
    if start is None:
        lines += ["\n" if lines else "", f"[{RUNTIME_TABLE}]\n", 'mode = "legacy"\n']
    else:
        end = next((i for i in range(start + 1, len(lines)) if _TABLE.match(lines[i])), len(lines))
        at = next((i for i in range(start + 1, end) if _MODE.match(lines[i])), None)
        if at is None:
            lines.insert(start + 1, 'mode = "legacy"\n')
        else:
            lines[at] = _MODE.sub(r'\1mode = "legacy"', lines[at].rstrip("\n")) + "\n"
    out = "".join(lines)
    try:
        done = runtime_mode(tomllib.loads(out)) == "legacy"
    except tomllib.TOMLDecodeError:
        done = False
    if not done:
        raise ToolkitConfigError(
            f'{path}: could not set mode = "legacy" under [{RUNTIME_TABLE}] (an unusual layout). '
            "Set it by hand, then run setup again. Nothing was changed."
        )
    return out


def plan_runtime_config(toml_text: str, version_output: str, path: str,
                        runtime: str = "nvidia-container-runtime") -> tuple[str, Verdict]:
    """The runtime config setup should write, and why; raises :class:`ToolkitConfigError` where
    setup must refuse."""
    mode = runtime_mode(parse_runtime_config(toml_text, path))
    verdict = decide(parse_version(version_output), mode, runtime)
    if verdict.action == "refuse":
        raise ToolkitConfigError(verdict.reason)
    if verdict.action == "set-legacy":
        return set_legacy_mode(toml_text, path), verdict
    return toml_text, verdict


def probe_version(runtime: str, timeout: float = 15) -> str:
    """``<runtime> --version`` output ('' when it cannot run).  The real runtime prints its own
    version first, then execs runc's ``--version``."""
    try:
        done = subprocess.run([runtime, "--version"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr
