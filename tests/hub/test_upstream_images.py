"""Images chosen the upstream way (``DockerSpawner.allowed_images`` and ``user_options["image"]``)
with gpuhub's spawners, and a profile's own image (which wins).

The first tests call the spawner's methods directly (no engine: images are only names there);
the last ones go through a real JupyterHub, its spawn form and REST API, and a real Docker
engine, and read the image of the container that was made.
"""

from __future__ import annotations

import contextlib
import secrets

import docker
import pytest
from harness import IMAGE, container_of, render_form, signed_in
from jupyterhub.spawner import SpawnException
from offline_spawner import offline_spawner

from gpuhub_spawner.hub.forms import render_options_form
from gpuhub_spawner.hub.profile_image import options_from_form, short_image_name
from gpuhub_spawner.hub.spawners import GPUDockerSpawner
from gpuhub_spawner.hub.swarmspawner import GPUSwarmSpawner

PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "pool": None, "default": True},
    {"slug": "workshop", "display_name": "Workshop", "pool": None},
]
OWN = "registry.example:5000/gpuhub/workshop:latest"


def _spawner(cls: type = GPUDockerSpawner, **config) -> GPUDockerSpawner:
    settings = {
        "gpu_hub_id": "img-hub", "usage_db_url": "", "tutorials_source": "", "gpu_discovery": "static",
        "gpu_profiles": PROFILES, "gpu_profile_images": {"workshop": OWN}, "image": "gpuhub/singleuser:latest",
        **config,
    }
    return offline_spawner(cls, "ann", **settings)


async def _choose(spawner, options: dict) -> str:
    """One start's image decision, as the admission makes it (user_options are set first)."""
    spawner.user_options = options
    await spawner.apply_image_choice(options)
    return spawner.image


def _pick_two(spawner) -> dict[str, str]:
    return {"sci": "gpuhub/sci:1", "tiny": "gpuhub/tiny:2"}


@pytest.mark.parametrize("cls", [GPUDockerSpawner, GPUSwarmSpawner], ids=["docker", "swarm"])
@pytest.mark.parametrize(
    ("allowed", "asked", "runs"),
    [
        (["gpuhub/sci:1", "gpuhub/tiny:2"], "gpuhub/tiny:2", "gpuhub/tiny:2"),
        ({"sci": "gpuhub/sci:1", "tiny": "gpuhub/tiny:2"}, "tiny", "gpuhub/tiny:2"),
        (_pick_two, "sci", "gpuhub/sci:1"),
        ("*", "anything/at-all:3", "anything/at-all:3"),
    ],
    ids=["list", "dict-alias", "callable", "any"],
)
async def test_the_users_allowed_image_runs(cls, allowed, asked, runs):
    spawner = _spawner(cls, allowed_images=allowed)
    assert await _choose(spawner, {"profile": "cpu", "image": asked}) == runs
    # the next start without a choice runs the configured image again
    assert await _choose(spawner, {"profile": "cpu"}) == "gpuhub/singleuser:latest"


@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        ({}, "Specifying image to launch is not allowed."),
        (["gpuhub/sci:1", "gpuhub/tiny:2"], "Image evil/miner not in allowed list: gpuhub/sci:1, gpuhub/tiny:2."),
    ],
    ids=["none-allowed", "not-in-list"],
)
async def test_an_image_not_allowed_is_refused_with_the_parents_words(allowed, message):
    spawner = _spawner(allowed_images=allowed)
    with pytest.raises(SpawnException) as refused:
        await _choose(spawner, {"profile": "cpu", "image": "evil/miner"})
    assert refused.value.status_code == 400
    assert refused.value.jupyterhub_message == message


async def test_a_profiles_own_image_wins_and_another_is_refused():
    spawner = _spawner(allowed_images=["gpuhub/sci:1", "gpuhub/tiny:2"])
    assert await _choose(spawner, {"profile": "workshop"}) == OWN
    assert await _choose(spawner, {"profile": "workshop", "image": OWN}) == OWN
    with pytest.raises(SpawnException) as refused:
        await _choose(spawner, {"profile": "workshop", "image": "gpuhub/sci:1"})
    assert refused.value.status_code == 400
    assert refused.value.jupyterhub_message == (
        "The profile 'workshop' runs its own image (workshop), not 'gpuhub/sci:1'. Leave the image "
        "out, or choose a profile without its own image."
    )
    # DockerSpawner.start checks the option again through check_allowed: the same answer
    assert await spawner.check_allowed(OWN) == OWN
    with pytest.raises(SpawnException):
        await spawner.check_allowed("gpuhub/sci:1")


async def test_image_must_be_a_name():
    with pytest.raises(SpawnException) as refused:
        await _choose(_spawner(allowed_images="*"), {"profile": "cpu", "image": ["a", "b"]})
    assert refused.value.status_code == 400 and "'image' must be an image name" in refused.value.jupyterhub_message


def test_the_form_field_is_kept_except_for_a_profile_with_its_own_image():
    spawner = _spawner(allowed_images=["gpuhub/sci:1", "gpuhub/tiny:2"])
    form = {"profile": ["cpu"], "image": ["gpuhub/tiny:2"]}
    assert options_from_form(form, spawner=spawner) == {"profile": "cpu", "image": "gpuhub/tiny:2"}
    assert options_from_form({**form, "profile": ["workshop"]}, spawner=spawner) == {"profile": "workshop"}
    # JupyterHub passes the spawner to an options_from_form that takes one
    assert spawner.run_options_from_form(form) == {"profile": "cpu", "image": "gpuhub/tiny:2"}


@pytest.mark.parametrize(
    ("allowed", "choices"),
    [
        (["gpuhub/sci:1", "gpuhub/tiny:2"], ["gpuhub/sci:1", "gpuhub/tiny:2"]),
        ({"Science": "gpuhub/sci:1", "Tiny": "gpuhub/tiny:2"}, ["Science", "Tiny"]),
        (_pick_two, ["sci", "tiny"]),
        (["gpuhub/sci:1"], []),  # upstream: a field only when there is a choice
        ("*", []),
        ({}, []),
    ],
    ids=["list", "dict", "callable", "one", "any", "none"],
)
def test_the_form_offers_upstreams_choices(allowed, choices):
    fields = _spawner(allowed_images=allowed).image_form_fields()
    assert fields["image_choices"] == choices
    assert fields["images"] == {"workshop": "workshop"}
    assert fields["default_image"] == "singleuser"


def _row(html: str, slug: str) -> str:
    start = html.index(f'value="{slug}"')
    return html[start : html.index("</div>", start)]


def test_each_profile_row_names_its_image():
    profiles = _spawner().profiles
    fields = _spawner().image_form_fields()
    html = render_options_form(profiles, {}, {}, {}, **fields)
    assert "Image: singleuser" in _row(html, "cpu") and "Image: workshop" in _row(html, "workshop")
    assert 'name="image"' not in html  # no choice configured: no field

    fields = _spawner(allowed_images=["gpuhub/sci:1", "gpuhub/tiny:2"]).image_form_fields()
    html = render_options_form(profiles, {}, {}, {}, **fields)
    assert "Image: the one you choose below" in _row(html, "cpu")
    assert "Image: workshop" in _row(html, "workshop") and 'data-own-image="workshop"' in _row(html, "workshop")
    assert '<option value="gpuhub/tiny:2">gpuhub/tiny:2</option>' in html


@pytest.mark.parametrize(
    ("image", "short"),
    [
        ("gpuhub/singleuser:latest", "singleuser"),
        ("registry.example:5000/gpuhub/pytorch:2.4", "pytorch:2.4"),
        ("workshop", "workshop"),
        ("gpuhub/x@sha256:" + "ab" * 32, "x@sha256:" + "ab" * 6),
    ],
    ids=["latest", "registry-port", "bare", "digest"],
)
def test_short_image_name(image, short):
    assert short_image_name(image) == short


def test_config_check_names_the_profile_whose_image_is_not_allowed(tmp_path, capsys):
    import yaml

    from gpuhub_spawner.cli import main as gpuhub

    path = tmp_path / "gpuhub.yaml"
    path.write_text(yaml.safe_dump({
        "images": {"default": "gpuhub/singleuser:latest", "allowed": ["gpuhub/workshop:latest"]},
        "profiles": [{"slug": "cpu", "pool": None}, {"slug": "miner", "pool": None, "image": "evil/miner"}],
    }))
    assert gpuhub(["config", "check", str(path)]) == 2
    assert capsys.readouterr().err == (
        "gpuhub: configuration error: profiles[1].image: 'evil/miner' is not an allowed image: add it to "
        "images.allowed, or use one of 'gpuhub/singleuser:latest', 'gpuhub/workshop:latest' in profile 'miner'\n"
    )


# ---- through a real hub -----------------------------------------------------------------


@pytest.fixture
def retag(docker_client):
    """A second local name for the test image (made here, removed after)."""
    name = f"gpuhub-test/retag-{secrets.token_hex(4)}:latest"
    docker_client.images.get(IMAGE).tag(name)
    yield name
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(name, noprune=True)


@pytest.mark.docker
@pytest.mark.hub
def test_upstream_allowed_images_through_the_hub(docker_client, hub_factory, retag):
    """``c.DockerSpawner.allowed_images`` on gpuhub's spawner: the form offers the choice, the form
    post and the REST API run the chosen image, a profile's own image wins, and an image not
    allowed is refused before anything is made."""
    extra = f"c.DockerSpawner.allowed_images = {{'standard': {IMAGE!r}, 'retagged': {retag!r}}}\n"
    hub = hub_factory({"gpu_profiles": PROFILES, "gpu_profile_images": {"workshop": retag}}, extra=extra)
    hub.create_users(["fay", "gus", "hal"])

    form = render_form(hub, "fay")
    assert '<select class="form-control form-select" id="gpuhub-image" name="image">' in form, form
    assert '<option value="retagged">retagged</option>' in form, form
    assert f'data-own-image="{short_image_name(retag)}"' in form  # the workshop row names its image

    # the spawn form, posted as fay's browser does: the image picked is the image that runs
    browser = signed_in(hub, "fay")
    r = browser.post(hub.url + "/hub/spawn", allow_redirects=False, timeout=60,
                     data={"profile": "cpu", "image": "retagged", "_xsrf": browser.cookies.get("_xsrf")})
    assert r.status_code == 302, r.text
    hub.wait_ready("fay")
    assert container_of(docker_client, hub, "fay").attrs["Config"]["Image"] == retag

    # REST: an image not allowed is refused at once with DockerSpawner's words; nothing is made
    r = hub.spawn("gus", {"profile": "cpu", "image": "evil/miner:latest"})
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "Image evil/miner:latest not in allowed list: standard, retagged."
    # ... and so is another image with a profile that runs its own
    r = hub.spawn("gus", {"profile": "workshop", "image": "standard"})
    assert r.status_code == 400, r.text
    assert "runs its own image" in r.json()["message"]
    assert not [c for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.user") == "gus"]

    # REST: the profile's own image runs without a choice
    r = hub.spawn("hal", {"profile": "workshop"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("hal")
    assert container_of(docker_client, hub, "hal").attrs["Config"]["Image"] == retag
    assert "Traceback" not in hub.log_path.read_text(errors="replace")
