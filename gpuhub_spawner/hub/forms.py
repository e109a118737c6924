"""The profile picker users see, and the checks on what comes back (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from gpuhub_spawner.core.inventory import Profile


class ProfileChoiceError(ValueError):
    """``user_options`` named no usable profile; ``str()`` is the message for the user."""

    def __init__(self, message: str, reason: str = "bad-profile"):
        self.reason = reason
        super().__init__(message)


def render_options_form(
    profiles: Sequence[Profile],
    free: Mapping[str, int],
    sizes: Mapping[str, int],
    waiting: Mapping[str, int],
    allowed: set[str] | None = None,
    notice: str = "",
) -> str:
    """HTML radio list of the profiles this user may pick, with free counts.

    Profiles outside ``allowed`` are left out (the server refuses them anyway); ``notice`` is a
    line shown above the list, such as the GPU time left.
    """
    rows = []
    checked_done = False
    shown = [p for p in profiles if allowed is None or p.slug in allowed]
    for profile in shown:
        if profile.cpu_only:
            status = "always available"
        else:
            n_free, size = free.get(profile.pool, 0), sizes.get(profile.pool, 0)
            status = f"{n_free} of {size} free"
            if n_free == 0:
                queued = waiting.get(profile.pool, 0)
                status += f", {queued} waiting" if queued else ", you may have to wait"
        checked = ""
        if not checked_done and (profile.default or profile is shown[-1]):
            checked, checked_done = " checked", True
        rows.append(
            '<div class="radio gpuhub-profile">\n'
            f'  <label><input type="radio" name="profile" value="{escape(profile.slug)}"{checked}>\n'
            f"  <strong>{escape(profile.display_name)}</strong>"
            f' <span class="text-muted">({escape(status)})</span>\n'
            f"  <br><small>{escape(profile.description)}</small></label>\n"
            "</div>"
        )
    if not rows:
        rows.append("<p>No server profile is available to you. Ask the hub's admin.</p>")
    head = f'<p class="gpuhub-notice">{escape(notice)}</p>\n' if notice else ""
    return (
        '<div class="form-group gpuhub-profiles">\n'
        + head
        + "<p>Choose what your server gets:</p>\n"
        + "\n".join(rows)
        + "\n</div>"
    )


def options_from_form(formdata: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Form fields (lists of strings) to ``user_options``."""
    values = formdata.get("profile") or []
    return {"profile": values[0]} if values else {}


def choose_profile(
    profiles: Sequence[Profile], user_options: Mapping[str, Any], allowed: set[str] | None = None
) -> Profile:
    """The profile ``user_options`` asks for (the default when it names none).

    Raises :class:`ProfileChoiceError` for an unknown profile or one this user may not use.
    """
    slug = user_options.get("profile") if user_options else None
    if slug is None or slug == "":
        usable = [p for p in profiles if allowed is None or p.slug in allowed]
        for profile in usable:
            if profile.default:
                return profile
        if usable:
            return usable[0]
        raise ProfileChoiceError(
            "No server profile is available to you. Ask the hub's admin.", reason="forbidden-profile"
        )
    if not isinstance(slug, str):
        raise ProfileChoiceError(f"'profile' must be a profile name, not {type(slug).__name__}.")
    by_slug = {p.slug: p for p in profiles}
    if slug not in by_slug:
        names = ", ".join(sorted(by_slug))
        raise ProfileChoiceError(f"There is no profile called '{slug[:64]}'. Choose one of: {names}.")
    if allowed is not None and slug not in allowed:
        raise ProfileChoiceError(
            f"You may not use the profile '{slug}'. Choose another one.", reason="forbidden-profile"
        )
    return by_slug[slug]
