"""Which image a server runs: a profile's own image, the user's choice, or the configured one.

Two ways to name an image meet here, and one rule decides between them:

1. **A profile's own image** (``profiles[].image`` in gpuhub.yaml, checked against
   ``images.allowed`` by ``gpuhub config check``; on the spawner ``gpu_profile_images``) wins.
   The form shows it on the profile's row and does not offer the image choice with it; a REST
   request that names another image with that profile is refused (400), never silently run with
   a different one.
2. **The user's choice, the upstream way**: ``c.DockerSpawner.allowed_images`` (a list, a dict of
   name -> image, ``"*"``, or a callable, exactly as DockerSpawner takes it) and
   ``user_options["image"]`` (the form's ``image`` field, or the REST body).  DockerSpawner's own
   ``check_allowed`` decides; its refusal reaches the user before anything starts.
3. Otherwise the configured ``image`` (``images.default``).

The choice is made in the admission (``apply_user_options``, before ``pre_spawn_hook`` and
``start``) and set on ``spawner.image``, which DockerSpawner's ``create_object`` and the swarm
service spec read.  Each start decides again from the configured image, so a server started
with one profile does not keep another's image.

A profile's own environment (``profiles[].environment``) is applied by
:func:`profile_environment_hook`, a ``pre_spawn_hook``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from weakref import WeakKeyDictionary

from tornado import web
from traitlets import Dict, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from gpuhub_spawner.hub import forms
from gpuhub_spawner.hub.errors import spawn_error


def short_image_name(image: str) -> str:
    """What the form shows of an image: no registry or namespace, no ``:latest``, a short digest.

    ``registry:5000/gpuhub/pytorch:latest`` -> ``pytorch``; ``gpuhub/workshop:2024`` ->
    ``workshop:2024``; ``x@sha256:0123456789abcdef…`` -> ``x@sha256:0123456789ab``.
    """
    name, _, digest = image.partition("@")
    name = name.rsplit("/", 1)[-1]
    if name.endswith(":latest"):
        name = name[: -len(":latest")]
    if digest:
        name += "@" + digest[: len("sha256:") + 12]
    return name


def own_image_refusal(slug: str, own: str, asked: str) -> str:
    """The message for an image asked for with a profile that comes with its own."""
    return (
        f"The profile '{slug}' runs its own image ({short_image_name(own)}), not '{asked[:128]}'. "
        "Leave the image out, or choose a profile without its own image."
    )


class ProfileImages(LoggingConfigurable):
    """The image of each start (mixed into ``GPUSpawnerMixin``, before DockerSpawner)."""

    gpu_profile_images = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Profiles that run their own image: profile slug -> image.

        Such a profile always runs its image (a user's ``image`` option is refused for it);
        other profiles run the user's choice from ``DockerSpawner.allowed_images``, else
        ``image``.  gpuhub.yaml sets it from ``profiles[].image``.

        c.GPUDockerSpawner.gpu_profile_images = {"workshop": "gpuhub/workshop:latest"}
        """,
    )

    @validate("gpu_profile_images")
    def _images_named(self, proposal: Any) -> dict[str, str]:
        empty = sorted(slug for slug, image in proposal.value.items() if not image.strip())
        if empty:
            raise TraitError(
                f"gpu_profile_images: profile(s) {', '.join(empty)} name an empty image: give an "
                "image, or leave the profile out to run the configured image."
            )
        return proposal.value

    #: ``image`` as configured, before any start chose another (``None``: not read yet)
    _configured_image: str | None = None

    def own_image(self, user_options: Mapping[str, Any] | None) -> tuple[str, str]:
        """(slug, image) of the profile ``user_options`` picks, when it runs its own image."""
        try:
            profile = forms.choose_profile(self.profiles, user_options or {})
        except forms.ProfileChoiceError:
            return "", ""  # the admission says why
        return profile.slug, self.gpu_profile_images.get(profile.slug, "")

    async def apply_image_choice(self, user_options: Any) -> None:
        """Set ``image`` for this start (see the module's rule); refuse what may not run."""
        if self._configured_image is None:
            self._configured_image = self.image
        asked = user_options.get("image") if isinstance(user_options, Mapping) else None
        if asked is not None and not isinstance(asked, str):
            raise spawn_error(f"'image' must be an image name, not {type(asked).__name__}.", "bad-profile")
        self.image = await self.check_allowed(asked) if asked else self.own_image(user_options)[1]
        self.image = self.image or self._configured_image

    async def check_allowed(self, image: str) -> str:
        """DockerSpawner's check of a user's image (it calls this in ``start`` too), after the
        profile's own image, which wins; a refusal is one clear message, no traceback."""
        slug, own = self.own_image(self.user_options)
        if own:
            if image != own:
                raise spawn_error(own_image_refusal(slug, own, image), "bad-profile")
            return own
        try:
            return await super().check_allowed(image)
        except web.HTTPError as e:
            message = f"{e.log_message or 'This image may not be used'}."
            raise spawn_error(message, "bad-profile", log_message=f"{self._log_name}: {message}") from None

    def image_choices(self) -> dict[str, str]:
        """The images a user may pick in the form (name -> image): DockerSpawner's rule, none
        for ``"*"`` (any image, REST only) or a single one."""
        allowed = self._get_allowed_images()
        if allowed == "*" or not allowed or len(allowed) <= 1:
            return {}
        return dict(allowed)

    def image_form_fields(self) -> dict[str, Any]:
        """``render_options_form``'s image arguments: each profile's image, the choice offered."""
        configured = self.image if self._configured_image is None else self._configured_image
        choices = self.image_choices()
        chosen = next((name for name, image in choices.items() if image == self.image), configured)
        return {
            "images": {slug: short_image_name(image) for slug, image in self.gpu_profile_images.items()},
            "default_image": short_image_name(configured),
            "image_choices": list(choices),
            "image_chosen": chosen,
        }


def options_from_form(formdata: Mapping[str, Sequence[str]], spawner: Any = None) -> dict[str, Any]:
    """``options_from_form`` of the GPU spawners: the profile, and the image picked with it
    (not kept for a profile that runs its own image; the form says so)."""
    options = forms.options_from_form(formdata)
    if spawner is not None and "image" in options and spawner.own_image(options)[1]:
        del options["image"]
    return options


def profile_environment_hook(by_slug: Mapping[str, Mapping[str, str]]) -> Callable[[Any], Any]:
    """A ``pre_spawn_hook`` giving each profile ``slug`` its own extra environment.

    The hook picks the profile exactly as the spawner does (the same choice function, the same
    allowed set); every start sets the environment again, so one profile's does not stay for
    the next.  A choice that is not valid is left to the spawner to refuse.
    """
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
        spawner.environment = {**base_environment[spawner], **by_slug.get(profile.slug, {})}

    return apply
