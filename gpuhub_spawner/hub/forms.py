"""The profile picker users see (a Jinja template operators may override), and the checks on
what comes back. No I/O but reading the template."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader

from gpuhub_spawner.core.inventory import Profile

log = logging.getLogger(__name__)


class ProfileChoiceError(ValueError):
    """``user_options`` named no usable profile; ``str()`` is the message for the user."""

    def __init__(self, message: str, reason: str = "bad-profile"):
        self.reason = reason
        super().__init__(message)


TEMPLATES = Path(__file__).with_name("templates")
FORM_TEMPLATE = "gpuhub_spawn_form.html"


@lru_cache(maxsize=8)
def form_environment(template_paths: tuple[str, ...] = ()) -> Environment:
    """The Jinja environment for the form: ``template_paths`` first, then gpuhub's own templates.

    ``template_paths`` is the hub's own search path (``c.JupyterHub.template_paths``), so an
    operator overrides the form where they override the hub's pages. The built-in template stays
    reachable as ``gpuhub/<name>`` for an override that extends it.
    """
    loader = ChoiceLoader(
        [
            FileSystemLoader([*template_paths, str(TEMPLATES)]),
            PrefixLoader({"gpuhub": FileSystemLoader(str(TEMPLATES))}),
        ]
    )
    return Environment(loader=loader, autoescape=True)


def profile_rows(
    profiles: Sequence[Profile],
    free: Mapping[str, int],
    sizes: Mapping[str, int],
    waiting: Mapping[str, int],
    allowed: set[str] | None = None,
    images: Mapping[str, str] | None = None,
    default_image: str = "",
    limit_notes: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per profile this user may pick: its free count in words, and which one is checked.

    Profiles outside ``allowed`` are left out (the server refuses them anyway); the default is
    checked, else the last one.  ``images`` names the profiles that run their own image (slug ->
    short name): ``own_image`` is set on those rows, ``image`` on every row (else ``default_image``).
    """
    images = images or {}
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
        checked = not checked_done and (profile.default or profile is shown[-1])
        checked_done = checked_done or checked
        rows.append(
            {
                "slug": profile.slug,
                "name": profile.display_name,
                "description": profile.description,
                "status": status,
                "checked": checked,
                "own_image": bool(images.get(profile.slug)),
                "image": images.get(profile.slug) or default_image,
                # which kind of GPU limit applies (shared pools: MPS-enforced, or a hint)
                "gpu_limit": (limit_notes or {}).get(profile.pool or "", ""),
            }
        )
    return rows


def render_options_form(
    profiles: Sequence[Profile],
    free: Mapping[str, int],
    sizes: Mapping[str, int],
    waiting: Mapping[str, int],
    allowed: set[str] | None = None,
    notice: str = "",
    template_paths: Sequence[str] = (),
    images: Mapping[str, str] | None = None,
    default_image: str = "",
    image_choices: Sequence[str] = (),
    image_chosen: str = "",
    limit_notes: Mapping[str, str] | None = None,
    home: Mapping[str, Any] | None = None,
) -> str:
    """HTML radio list of the profiles this user may pick, with free counts and images.

    ``notice`` is a line shown above the list, such as the GPU time left. ``images`` and
    ``default_image`` are the short image names shown per profile (see :func:`profile_rows`);
    ``image_choices`` (DockerSpawner's ``allowed_images`` names, more than one) become the
    ``image`` field, ``image_chosen`` selected, for the profiles without their own image. The
    HTML comes from ``gpuhub_spawn_form.html``, found first in ``template_paths``; an override
    that does not render is logged and the built-in template is used, so users can still start
    a server.  ``home`` (on a swarm, for a user whose files are on one node): ``node``, ``files``,
    ``empty``, ``notes`` (slug -> what that node can do for the profile); the form then offers
    the ``placement`` choice (:mod:`gpuhub_spawner.core.home_node`).
    """
    context = {
        "home": home,
        "rows": profile_rows(profiles, free, sizes, waiting, allowed, images, default_image, limit_notes),
        "notice": notice,
        "image_choices": list(image_choices),
        "image_chosen": image_chosen,
    }
    try:
        return form_environment(tuple(template_paths)).get_template(FORM_TEMPLATE).render(context)
    except Exception as e:  # an operator's template may raise anything
        if not template_paths:
            raise
        log.error(
            "The spawn form template in %s does not render (%s: %s); using gpuhub's own. Fix the "
            "override or remove it from c.JupyterHub.template_paths.",
            ", ".join(template_paths),
            type(e).__name__,
            e,
        )
        return form_environment(()).get_template(FORM_TEMPLATE).render(context)


def options_from_form(formdata: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Form fields (lists of strings) to ``user_options``: the profile, the image picked
    (DockerSpawner's field name, ``image``) and the placement choice, each when given."""
    options = {}
    for field in ("profile", "image", "placement"):
        values = formdata.get(field) or []
        if values and values[0]:
            options[field] = values[0]
    return options


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
