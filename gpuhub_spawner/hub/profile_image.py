"""A profile's own image and environment (``profiles[].image`` / ``environment`` in gpuhub.yaml).

Applied through JupyterHub's own extension point, ``Spawner.pre_spawn_hook``, which runs after
the user's options are set and before ``start``: the hook picks the profile exactly as the
spawner will (the same choice function, the same allowed set) and sets the image and extra
environment for this start. Every start sets both again, so a server started with one profile
does not keep another's image. A choice that is not valid is left to the spawner to refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from weakref import WeakKeyDictionary

from gpuhub_spawner.hub import forms


def profile_image_hook(
    by_slug: Mapping[str, tuple[str, Mapping[str, str]]], default_image: str
) -> Callable[[Any], Any]:
    """A ``pre_spawn_hook`` giving each profile ``slug`` its (image or ``default_image``, environment)."""
    # each spawner's configured environment, before any profile's was laid over it
    base_environment: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()

    async def apply(spawner: Any) -> None:
        if spawner not in base_environment:
            base_environment[spawner] = dict(spawner.environment)
        try:
            allowed = await spawner.allowed_profiles()
            profile = forms.choose_profile(spawner.profiles, spawner.user_options or {}, allowed)
        except forms.ProfileChoiceError:
            return  # the spawner's own admission says why
        image, environment = by_slug.get(profile.slug, ("", {}))
        spawner.image = image or default_image
        spawner.environment = {**base_environment[spawner], **environment}

    return apply
