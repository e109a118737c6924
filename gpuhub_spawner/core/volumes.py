"""Mount specs for a user's server (pure: builds specs, touches nothing).

- the shared tutorials, read-only, from a host path or a named volume;
- the user's private scratch, a named volume of their own;
- the user's editable copy of the tutorials, a named volume of their own, refreshed at each
  start by ``gpuhub_usercopy.py`` inside the container without overwriting their edits.

The single-user image creates the mount points owned by uid 1000, so Docker seeds a new
named volume with that owner and the notebook user can write to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from docker.types import Mount

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class VolumePlan:
    user: str
    tutorials_source: str
    tutorials_target: str
    scratch_volume: str
    scratch_target: str
    copy_volume: str
    copy_target: str


def is_host_path(source: str) -> bool:
    return source.startswith("/")


def check_source(setting: str, source: str) -> str | None:
    """Why ``source`` cannot be mounted, or None if it can."""
    if not source:
        return None
    if is_host_path(source):
        if ".." in source.split("/"):
            return f"{setting}: host path {source!r} must not contain '..'"
        return None
    if not _VOLUME_NAME.match(source):
        return (
            f"{setting}: {source!r} is neither an absolute host path nor a valid volume name; "
            "use /a/host/dir or a name of letters, digits, '_', '.', '-'"
        )
    return None


def build_mounts(plan: VolumePlan) -> list[Mount]:
    """The Docker mounts for one server, in a stable order."""
    mounts = []
    if plan.tutorials_source:
        mounts.append(
            Mount(
                target=plan.tutorials_target,
                source=plan.tutorials_source,
                type="bind" if is_host_path(plan.tutorials_source) else "volume",
                read_only=True,
            )
        )
    for volume, target, purpose in (
        (plan.scratch_volume, plan.scratch_target, "scratch"),
        (plan.copy_volume, plan.copy_target, "tutorials-copy"),
    ):
        if volume:
            mounts.append(Mount(target=target, source=volume, type="volume", labels=volume_labels(plan.user, purpose)))
    return mounts


def volume_labels(user: str, purpose: str) -> dict[str, str]:
    """Labels put on a user's named volumes so admins (and tests) can find them."""
    return {"org.gpuhub.user": user, "org.gpuhub.volume": purpose}
