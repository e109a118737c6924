"""The node agent's image holds gpuhub's core and node packages and the ``node`` extra's
dependencies, nothing else (images/build.sh agent): the agent must import nothing beyond them.

The import check runs here, without the image: a child interpreter whose import system refuses
every module the image would not have (JupyterHub, SQLAlchemy, ``hub_services``, gpuhub's hub
and storage layers, any distribution outside the ``node`` extra's dependency closure), so an
import that drags the hub into the agent fails this test rather than the image build.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from needs import unavailable
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
AGENT_IMAGE = "gpuhub/node-agent:latest"
#: gpuhub's subpackages that images/build.sh puts in the agent image
IMAGE_PACKAGES = ("core", "node")
#: never in the agent image, whatever the dependency closure says
HUB_ONLY = ("jupyterhub", "dockerspawner", "sqlalchemy", "hub_services", "oauthenticator", "nativeauthenticator")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install, transitively (as installed here)."""
    env = {**default_environment(), "extra": ""}
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _canon(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        todo.extend(Requirement(r) for r in metadata.distribution(req.name).requires or [])
    return seen


def _image_top_levels() -> list[str]:
    dists = _closure(PYPROJECT["optional-dependencies"]["node"])
    return sorted(
        top
        for top, owners in metadata.packages_distributions().items()
        if any(_canon(o) in dists for o in owners) and top not in HUB_ONLY
    )


#: the child: refuse what the image lacks, then do what the image build does (import, --help-all)
CHILD = r"""
import importlib.abc, json, sys
allowed = set(json.loads(sys.argv[1])) | {"gpuhub_spawner"}
packages = set(json.loads(sys.argv[2]))

class NotInAgentImage(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top, _, rest = fullname.partition(".")
        if top == "gpuhub_spawner" and rest and rest.split(".")[0] not in packages:
            raise ImportError(f"{fullname} is not in the node agent image (only gpuhub_spawner.{{core,node}})")
        if top in sys.stdlib_module_names or top in allowed:
            return None
        raise ImportError(f"{fullname} is not in the node agent image (not a dependency of the node extra)")

sys.meta_path.insert(0, NotInAgentImage())
exec(sys.argv[3])
"""


def _run_child(code: str) -> subprocess.CompletedProcess:
    args = [json.dumps(_image_top_levels()), json.dumps(IMAGE_PACKAGES), code]
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_agent_imports_only_what_its_image_holds():
    code = (
        "import gpuhub_spawner.node.agent as agent, gpuhub_spawner.node.nvml, docker\n"
        "try:\n    agent.main(['--help-all'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('agent ok')"
    )
    result = _run_child(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "agent ok" in result.stdout and "--hpc-job-mapping-dir" in result.stdout


@pytest.mark.parametrize(
    "module",
    ["gpuhub_spawner.hub.spawners", "gpuhub_spawner.storage.ledger", "hub_services.exporter.app", "jupyterhub"],
)
def test_the_check_refuses_what_the_image_lacks(module):
    """The same child refuses hub code: the check above could fail."""
    result = _run_child(f"import {module}")
    assert result.returncode != 0
    assert "is not in the node agent image" in result.stderr


def test_image_closure_has_no_hub_dependency():
    tops = set(_image_top_levels())
    assert {"docker", "pynvml", "prometheus_client", "tornado", "traitlets"} <= tops
    assert not tops & {"jupyterhub", "sqlalchemy", "dockerspawner", "oauthenticator", "alembic"}


# ---- what pyproject.toml declares ---------------------------------------------------------------


def test_hub_install_includes_the_node_extra_and_no_test_toolchain():
    """``pip install gpuhub`` (deploy/gpuhub-up) brings what the hub's own NVML discovery and
    node CLI need (the node extra, same lines) and none of the test tools."""
    base = PYPROJECT["dependencies"]
    extras = PYPROJECT["optional-dependencies"]
    assert set(extras["node"]) <= set(base)
    base_names = {_canon(Requirement(r).name) for r in base}
    assert "requests" in base_names  # the spawners and services import it
    test_names = {_canon(Requirement(r).name) for r in extras["test"]}
    assert {"pytest", "selenium", "ruff", "hypothesis"} <= test_names
    assert not base_names & test_names


def test_setup_cfg_holds_no_stale_tool_section():
    text = (REPO / "setup.cfg").read_text()
    assert not re.search(r"^\s*\[", text, re.M), "setup.cfg: settings belong in pyproject.toml"


# ---- the built image ------------------------------------------------------------------------------


@pytest.mark.docker
def test_built_image_runs_without_jupyterhub(docker_client):
    import docker

    try:
        docker_client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {AGENT_IMAGE}: run images/build.sh agent")
    probe = (
        "import importlib.util as u, json;"
        "print(json.dumps({m: u.find_spec(m) is not None for m in "
        "['jupyterhub', 'sqlalchemy', 'hub_services', 'gpuhub_spawner.hub', 'gpuhub_spawner.node.agent', 'pynvml']}))"
    )
    out = docker_client.containers.run(
        AGENT_IMAGE, ["-c", probe], entrypoint="/opt/venv/bin/python", remove=True, labels={"org.gpuhub.test": "1"}
    )
    found = json.loads(out.decode().strip().splitlines()[-1])
    assert found == {
        "jupyterhub": False,
        "sqlalchemy": False,
        "hub_services": False,
        "gpuhub_spawner.hub": False,
        "gpuhub_spawner.node.agent": True,
        "pynvml": True,
    }
    help_text = docker_client.containers.run(AGENT_IMAGE, ["--help-all"], remove=True, labels={"org.gpuhub.test": "1"})
    assert b"--token-file" in help_text


def test_the_agent_stops_at_once_on_docker_stop_and_says_what_it_lacks(docker_client):
    """The agent is its container's PID 1: it handles SIGTERM (exit 0), where an unhandled one is
    ignored by the kernel and `docker stop` kills it when the grace period ends (exit 137)."""
    import docker

    try:
        docker_client.images.get(AGENT_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {AGENT_IMAGE}: run images/build.sh agent")
    # without the engine's socket: one line that says what to mount, no traceback
    out = docker_client.containers.run(AGENT_IMAGE, ["--no-auth", "--ip", "127.0.0.1"], detach=True,
                                       labels={"org.gpuhub.test": "1"})
    try:
        assert out.wait(timeout=90)["StatusCode"] == 2
        said = out.logs().decode(errors="replace")
        assert "gpuhub-node-agent: cannot reach this node's Docker engine" in said and "Traceback" not in said, said
    finally:
        out.remove(force=True)

    container = docker_client.containers.run(
        AGENT_IMAGE, ["--no-auth", "--ip", "127.0.0.1", "--port", "9469"], detach=True,
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "ro"}},
        labels={"org.gpuhub.test": "1"})
    try:
        deadline = time.monotonic() + 60
        while b"gpuhub node agent for" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert b"gpuhub node agent for" in container.logs(), container.logs()[-2000:]
        container.stop(timeout=60)
        assert container.wait(timeout=90)["StatusCode"] == 0, container.logs()[-2000:]
        assert b"stopped (signal)" in container.logs()
    finally:
        container.remove(force=True)
