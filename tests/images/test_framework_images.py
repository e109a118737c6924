"""The framework images (images/pytorch, images/workshop) in a real Docker engine.

Each kernel is started the way JupyterLab starts it (jupyter_client, from its kernelspec in the
server's environment) and imports its framework: the version must be the pinned one and the
build a CUDA build. No GPU exists on these machines, so ``torch.cuda.is_available()`` is False
here and only its type is checked; on a GPU machine the same line reads True (tests/gpu).

The images are built by ``images/build.sh workshop`` (deploy/gpuhub-test does it, cached): where
one is missing the test skips, and fails under CI.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import docker
import pytest
from needs import unavailable

pytestmark = [pytest.mark.docker]

IMAGES = Path(__file__).resolve().parents[2] / "images"
# the names images/build.sh gives them (it reads the same variables)
PYTORCH_IMAGE = os.environ.get("GPUHUB_PYTORCH_IMAGE", "gpuhub/pytorch:latest")
WORKSHOP_IMAGE = os.environ.get("GPUHUB_WORKSHOP_IMAGE", "gpuhub/workshop:latest")

#: kernelspec name -> (display name, venv, requirements file, module, distribution pinned there)
KERNELS = {
    "pytorch": ("Python (PyTorch)", "/opt/venvs/pytorch", IMAGES / "pytorch" / "requirements.txt",
                "torch", "torch"),
    "tensorflow": ("Python (TensorFlow)", "/opt/venvs/tensorflow",
                   IMAGES / "workshop" / "requirements-tensorflow.txt", "tensorflow", "tensorflow"),
}
#: image -> the framework kernels it must register
IMAGE_KERNELS = {PYTORCH_IMAGE: ["pytorch"], WORKSHOP_IMAGE: ["pytorch", "tensorflow"]}

#: run in the server's environment: start each named kernel through its kernelspec, as
#: JupyterLab does, run the probe, print one JSON line per kernel
KERNEL_PROBE = r"""
import json, sys
from jupyter_client.manager import start_new_kernel
hook = "getattr(sys.modules.get('sitecustomize'), '__file__', None)"  # gpuhub's start hook, if it ran
probes = {
    "pytorch": "import torch, sys; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), "
               "sys.prefix, " + hook + ")",
    "tensorflow": "import tensorflow as tf, sys; print(tf.__version__, tf.test.is_built_with_cuda(), "
                  "len(tf.config.list_physical_devices('GPU')) > 0, sys.prefix, " + hook + ")",
}
for name in sys.argv[1:]:
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=120)
    out = []
    try:
        reply = kc.execute_interactive(probes[name], timeout=300,
            output_hook=lambda m: out.append(m["content"]["text"])
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout" else None)
        print(json.dumps({"kernel": name, "status": reply["content"]["status"], "out": "".join(out)}))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
"""


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure means no usable engine
        unavailable(f"no Docker engine: {e}")
    return client


def _image(client: docker.DockerClient, name: str):
    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        unavailable(f"image {name} missing: run images/build.sh workshop")


def _run(client: docker.DockerClient, image: str, argv: list[str], user: str = "") -> str:
    """``argv`` in a throwaway container of ``image`` (as the image's own user unless ``user``
    is given), with no network; its stdout."""
    out = client.containers.run(image, argv, remove=True, stderr=False, network_mode="none",
                                user=user or None)
    return out.decode(errors="replace")


def _run_status(client: docker.DockerClient, image: str, cmd: str, user: str = "root") -> tuple[int, str]:
    """``sh -c cmd`` in a throwaway container with no network: its exit status and output
    (stdout and stderr as the engine logged them: ``cmd`` keeps their order with ``exec 2>&1``)."""
    container = client.containers.run(image, ["sh", "-c", cmd], detach=True, network_mode="none", user=user)
    try:
        status = container.wait(timeout=300)["StatusCode"]
        return status, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def _pin(requirements: Path, dist: str) -> str:
    """The ``dist==version`` pin of a requirements file (extras allowed: tensorflow[and-cuda])."""
    for line in requirements.read_text().splitlines():
        m = re.match(rf"^{re.escape(dist)}(\[[^\]]*\])?==(\S+)", line.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"{requirements} pins no {dist}")


@pytest.mark.parametrize("image", list(IMAGE_KERNELS))
def test_kernels_are_registered_each_in_its_own_venv(client, image: str) -> None:
    _image(client, image)
    specs = json.loads(_run(client, image, ["jupyter", "kernelspec", "list", "--json"]))["kernelspecs"]
    for name in IMAGE_KERNELS[image]:
        display, venv, *_ = KERNELS[name]
        assert name in specs, f"{image}: no {name!r} kernel in {sorted(specs)}"
        spec = specs[name]["spec"]
        assert spec["display_name"] == display
        assert spec["argv"][0] == f"{venv}/bin/python", spec["argv"]
        # installed where the server (JupyterLab in /opt/venv) finds it for every user
        assert specs[name]["resource_dir"] == f"/opt/venv/share/jupyter/kernels/{name}"
    if image == PYTORCH_IMAGE:
        assert "tensorflow" not in specs


@pytest.mark.parametrize("image", list(IMAGE_KERNELS))
def test_each_kernel_imports_its_pinned_cuda_framework(client, image: str) -> None:
    _image(client, image)
    names = IMAGE_KERNELS[image]
    lines = _run(client, image, ["python3", "-c", KERNEL_PROBE, *names]).splitlines()
    results = {r["kernel"]: r for r in map(json.loads, (ln for ln in lines if ln.startswith("{")))}
    assert sorted(results) == sorted(names), lines
    for name in names:
        _display, venv, requirements, _module, dist = KERNELS[name]
        assert results[name]["status"] == "ok", results[name]
        fields = results[name]["out"].split()
        assert len(fields) == 5, results[name]
        version, cuda, device_seen, prefix, hook = fields
        assert version.split("+")[0] == _pin(requirements, dist), (image, name, version)
        assert prefix == venv
        if name == "pytorch":
            assert cuda != "None" and re.fullmatch(r"\d+\.\d+", cuda), f"not a CUDA build of torch: {cuda}"
        else:
            assert cuda == "True", "tensorflow is not a CUDA build"
        # no GPU on this machine: False here, True on a lent GPU machine (tests/gpu)
        assert device_seen in ("True", "False")
        # the single-user image's interpreter hook (a shared slot's PyTorch memory share) runs
        # in every kernel's venv, not only in JupyterLab's
        assert hook == "/opt/gpuhub/python/sitecustomize.py", (name, hook)


@pytest.mark.parametrize("venv, lock", [
    ("/opt/venvs/pytorch", IMAGES / "pytorch" / "constraints.txt"),
    ("/opt/venvs/tensorflow", IMAGES / "workshop" / "constraints-tensorflow.txt"),
])
def test_each_venv_holds_exactly_its_locked_packages(client, venv: str, lock: Path) -> None:
    """A rebuild installs what the tests passed with: nothing floats beyond the lock file."""
    _image(client, WORKSHOP_IMAGE)
    installed = sorted(_run(client, WORKSHOP_IMAGE, [f"{venv}/bin/pip", "freeze"]).splitlines())
    locked = sorted(ln for ln in lock.read_text().splitlines() if ln.strip() and not ln.startswith("#"))
    assert locked and installed == locked, f"{venv} differs from {lock.name}: rebuild, or regenerate the lock"


def test_the_two_frameworks_do_not_see_each_other(client) -> None:
    """Separate venvs: their nvidia-* pins conflict, so neither kernel may import the other's."""
    _image(client, WORKSHOP_IMAGE)
    probe = ("import importlib.util as u; "
             "print(u.find_spec('torch') is not None, u.find_spec('tensorflow') is not None)")
    seen = {venv: _run(client, WORKSHOP_IMAGE, [f"{venv}/bin/python", "-c", probe]).split()
            for venv in ("/opt/venvs/pytorch", "/opt/venvs/tensorflow", "/opt/venv")}
    assert seen == {
        "/opt/venvs/pytorch": ["True", "False"],
        "/opt/venvs/tensorflow": ["False", "True"],
        "/opt/venv": ["False", "False"],  # the server's environment stays small
    }


@pytest.mark.parametrize("image", list(IMAGE_KERNELS))
def test_gpuhub_start_script_editable_copy_and_user_are_kept(client, image: str) -> None:
    config = _image(client, image).attrs["Config"]
    assert config["Cmd"] == ["start-singleuser.sh"]
    assert config["Entrypoint"] == ["tini", "-g", "--"]
    assert config["User"] == "1000"
    who = _run(client, image, ["sh", "-c", "id -u; id -g; echo $HOME; "
                               "test -w /home/jovyan/scratch && test -w /home/jovyan/my-tutorials && echo writable; "
                               "test -x /usr/local/bin/start-singleuser.sh && echo executable"])
    assert who.split() == ["1000", "1000", "/home/jovyan", "writable", "executable"], who
    # the build ran as root with HOME=/home/jovyan: nothing it left there may be root's (an
    # ~/.ipython of root's sends IPython's history and profile to a temporary directory)
    assert _run(client, image, ["find", "/home/jovyan", "!", "-user", "1000"]) == ""
    for in_image, in_repo in (("/usr/local/bin/start-singleuser.sh", "start-singleuser.sh"),
                              ("/opt/gpuhub/gpuhub_usercopy.py", "gpuhub_usercopy.py")):
        assert _run(client, image, ["cat", in_image]) == (IMAGES / "singleuser" / in_repo).read_text(), \
            f"{image}'s {in_image} is not this checkout's: rebuild with images/build.sh workshop"


def test_workshop_is_built_on_the_pytorch_image_and_keeps_no_pip_cache(client) -> None:
    pytorch = _image(client, PYTORCH_IMAGE)
    workshop = _image(client, WORKSHOP_IMAGE)
    below = pytorch.attrs["RootFS"]["Layers"]
    assert workshop.attrs["RootFS"]["Layers"][: len(below)] == below, "workshop does not share pytorch's layers"
    leftovers = _run(client, WORKSHOP_IMAGE, [
        "sh", "-c", "ls -d /root/.cache/pip /home/jovyan/.cache/pip /tmp/pip-* 2>/dev/null; true"], user="root")
    assert leftovers.split() == []


@pytest.mark.parametrize("args, status, message", [
    pytest.param('Bad "X" /tmp/req.txt', 2, "kernel name 'Bad': use lower-case letters", id="bad-name"),
    pytest.param('pytorch "X" /tmp/req.txt', 2, "/opt/venvs/pytorch exists already", id="taken"),
    pytest.param('demo "Demo" /tmp/req.txt', 1, "/tmp/req.txt does not install ipykernel: add it", id="no-ipykernel"),
    pytest.param('demo', 2, "usage: gpuhub-add-kernel NAME DISPLAY_NAME REQUIREMENTS", id="usage"),
])
def test_add_kernel_refuses_clearly(client, args: str, status: int, message: str) -> None:
    """gpuhub-add-kernel (how the images add their kernels, and how an operator's image adds
    one more) says what is wrong and leaves no half-made venv or kernelspec behind."""
    _image(client, PYTORCH_IMAGE)
    code, out = _run_status(client, PYTORCH_IMAGE,
                            f"exec 2>&1; echo '# nothing' >/tmp/req.txt; gpuhub-add-kernel {args}; echo status=$?; "
                            "ls /opt/venvs; jupyter kernelspec list --json")
    assert code == 0 and f"status={status}" in out, out
    assert message in out, out
    listing, specs = out.split("status=", 1)[1].split("\n", 1)[1].split("{", 1)
    assert listing.split() == ["pytorch"], out
    assert sorted(json.loads("{" + specs)["kernelspecs"]) == ["python3", "pytorch"]
