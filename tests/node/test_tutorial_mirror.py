"""The per-node tutorial mirror: what it refuses to write, and a real hub's bundle mirrored.

The rig test (tests/swarm/test_tutorial_mirror_swarm.py) runs the mirror as a global service and
shows running servers on two nodes seeing a new commit.  Here: the tar checks on crafted
bundles, and the mirror against a real hub whose tutorial-sync service publishes from real Git.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests
from gitserver import WorkClone, make_bare, serve_http
from harness import fake_gpus, free_port

from gpuhub_spawner.core.tutorial_store import current_version
from gpuhub_spawner.node.tutorial_mirror import Limits, MirrorError, extract, stack_service

GIT_TOKEN = "git-tok-mirror-0001"
MIRROR_TOKEN = "mirror-token-0123456789abcdef0123456789"


def _bundle(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    """A tar of (kind, name, data): kind file, dir, sym (data: target), hard, fifo."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = data if isinstance(data, str) else ""
            tar.addfile(info)
    out.seek(0)
    return out


def test_a_plain_tree_is_written_with_its_links(tmp_path):
    staging = tmp_path / "s"
    staging.mkdir()
    count = extract(_bundle(("dir", "./nb", b""), ("file", "./nb/a.py", b"print(1)\n"),
                            ("sym", "./latest", "nb/a.py"), ("sym", "nb/up", "..")), staging, Limits())
    assert count == 4
    assert (staging / "latest").read_text() == "print(1)\n"
    assert os.readlink(staging / "nb" / "up") == ".."
    assert oct((staging / "nb" / "a.py").stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(
    ("members", "why"),
    [
        pytest.param([("file", "../evil", b"x")], "'..' is not allowed", id="dot-dot"),
        pytest.param([("file", "/etc/evil", b"x")], "absolute", id="absolute"),
        pytest.param([("file", "a/.git/config", b"x")], "'.git' is not allowed", id="dot-git"),
        pytest.param([("hard", "h", "a")], "only files, directories and symlinks", id="hard-link"),
        pytest.param([("fifo", "f", b"")], "only files, directories and symlinks", id="fifo"),
        pytest.param([("sym", "l", "/etc/passwd")], "absolute", id="absolute-link"),
        pytest.param([("sym", "d/l", "../../x")], "leaves the tree", id="link-leaves"),
        pytest.param([("sym", "up", "."), ("sym", "x", "up/../..")], "passes through another symlink",
                     id="link-through-link"),
        pytest.param([("file", "a", b"x" * 10), ("file", "b", b"x" * 10)], "larger than this mirror's limits",
                     id="over-the-size-cap"),
    ],
)
def test_a_bundle_with_anything_else_is_refused(tmp_path, members, why):
    staging = tmp_path / "s"
    staging.mkdir()
    with pytest.raises(MirrorError) as refused:
        extract(_bundle(*members), staging, Limits(max_total_bytes=15))
    assert why in str(refused.value)
    assert not (tmp_path / "evil").exists()


def test_the_stack_service_runs_one_mirror_per_node_with_its_secret_and_no_gpu():
    service = stack_service("gpuhub/node-agent:latest", "http://hub:8000/services/tutorial-sync/bundle",
                            "/srv/gpuhub/tutorials", "tutorial_mirror_token", "gpuhub_tutorial_mirror_token_v1",
                            ("gpuhub_internal",))
    assert service["deploy"]["mode"] == "global"
    assert service["secrets"] == [{"source": "gpuhub_tutorial_mirror_token_v1", "target": "tutorial_mirror_token"}]
    assert service["entrypoint"] == ["python3", "-m", "gpuhub_spawner.node.tutorial_mirror"]  # not the agent's
    assert service["command"][service["command"].index("--token-file") + 1] == "/run/secrets/tutorial_mirror_token"
    assert service["volumes"] == [{"type": "bind", "source": "/srv/gpuhub/tutorials", "target": "/srv/gpuhub/tutorials"}]
    assert service["environment"] == {"NVIDIA_VISIBLE_DEVICES": "void"} and service["networks"] == ["gpuhub_internal"]


def _mirror(url: str, token_file: Path, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpuhub_spawner.node.tutorial_mirror", "--url", url, "--token-file",
         str(token_file), "--store", str(store), "--once"],
        capture_output=True, text=True, timeout=60,
    )


def _until(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@pytest.mark.docker
@pytest.mark.hub
def test_the_mirror_follows_the_published_commit_and_only_its_token_reads_it(hub_factory, tmp_path):
    bare = make_bare(tmp_path / "repos" / "tutorials.git")
    clone = WorkClone(bare, tmp_path / "author")
    clone.write("intro.py", "print('v1')\n")
    clone.symlink("start-here.py", "intro.py")
    first = clone.commit_and_push("v1")
    store, node_store = tmp_path / "store", tmp_path / "node-store"
    token_file = tmp_path / "mirror-token"
    token_file.write_text(MIRROR_TOKEN + "\n")
    config = tmp_path / "gpuhub.yaml"
    config.write_text(json.dumps({"tutorials": {"mirror_token_file": str(token_file)}}))
    with serve_http(tmp_path / "repos", token=GIT_TOKEN) as base:
        hub = hub_factory({"gpu_inventory": fake_gpus(1, "tm"), "tutorials_source": str(store)}, start=False)
        hub.start(env={
            "GPUHUB_CONFIG": str(config), "GPUHUB_TUTORIALS_REPO": f"{base}/tutorials.git",
            "GPUHUB_TUTORIALS_STORE": str(store), "GPUHUB_TUTORIALS_TOKEN": GIT_TOKEN,
            "GPUHUB_TUTORIALS_POLL_INTERVAL": "1", "GPUHUB_TUTORIAL_SYNC_PORT": str(free_port()),
        })
        bundle = hub.url + "/services/tutorial-sync/bundle"
        _until(lambda: current_version(store) == first)

        done = _mirror(bundle, token_file, node_store)
        assert done.returncode == 0 and done.stdout.strip() == first, done.stdout + done.stderr
        assert (node_store / "current" / "start-here.py").read_text() == "print('v1')\n"
        assert os.readlink(node_store / "current") == f"versions/{first}"
        # nothing new: the service answers 304 and the mirror keeps what it has
        r = requests.get(bundle, params={"have": first}, headers={"Authorization": f"token {MIRROR_TOKEN}"},
                         timeout=10)
        assert (r.status_code, r.content) == (304, b"")

        clone.write("intro.py", "print('v2')\n")
        second = clone.commit_and_push("v2")
        _until(lambda: current_version(store) == second)
        done = _mirror(bundle, token_file, node_store)
        assert done.returncode == 0 and done.stdout.strip() == second, done.stdout + done.stderr
        assert (node_store / "current" / "intro.py").read_text() == "print('v2')\n"
        assert sorted(p.name for p in (node_store / "versions").iterdir()) == sorted([first, second])

        # an attendee's token, the hub's own admin-scoped test service, and no token: all refused
        hub.create_users(["ann"])
        attendee = hub.api("POST", "/users/ann/tokens", json={"note": "attendee"}).json()["token"]
        for headers in ({"Authorization": f"token {attendee}"}, {"Authorization": f"token {hub.token}"}, {}):
            r = requests.get(bundle, headers=headers, timeout=10)
            assert r.status_code == 403 and not r.content.startswith(b"./"), (headers, r.status_code)
        token_file.write_text(attendee)
        refused = _mirror(bundle, token_file, node_store)
        assert refused.returncode == 1 and "the hub refused the mirror's token (403)" in refused.stderr
        assert current_version(node_store) == second
        assert MIRROR_TOKEN not in hub.log_path.read_text(errors="replace")
