"""GitSource against real repositories: over git's own smart HTTP (with a token) and local paths."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from gitserver import WorkClone, git, make_bare, serve_http

from hub_services.tutorial_sync.gitsource import GitSource, SyncError

TOKEN = "ghp_s3cretTOKENvalue0123456789"


@pytest.fixture
def remote(tmp_path: Path) -> WorkClone:
    bare = make_bare(tmp_path / "srv" / "tutorials.git")
    clone = WorkClone(bare, tmp_path / "work")
    clone.write("README.md", "# Tutorials\n")
    clone.commit_and_push("first")
    return clone


@pytest.fixture
def http_url(remote: WorkClone):
    with serve_http(remote.bare.parent, token=TOKEN) as base:
        yield f"{base}/tutorials.git"


def test_fetch_over_http_returns_pushed_sha_and_follows_pushes(
    remote: WorkClone, http_url: str, tmp_path: Path
):
    source = GitSource(http_url, "main", tmp_path / "cache", token=TOKEN)
    first = remote.commit("again")
    remote.push()
    assert source.fetch() == first
    remote.write("lesson1.ipynb", "{}")
    second = remote.commit_and_push("lesson 1")
    assert source.fetch() == second
    assert (tmp_path / "cache" / "HEAD").is_file()


def test_bearer_token_scheme(remote: WorkClone, http_url: str, tmp_path: Path):
    source = GitSource(http_url, "main", tmp_path / "cache", token=TOKEN, auth_scheme="bearer")
    assert source.fetch() == git("rev-parse", "refs/heads/main", cwd=remote.bare)


def test_unknown_branch(http_url: str, tmp_path: Path):
    source = GitSource(http_url, "no-such-branch", tmp_path / "cache", token=TOKEN)
    with pytest.raises(SyncError, match="'no-such-branch' does not exist"):
        source.fetch()


@pytest.mark.parametrize("token", [None, "wrong-" + TOKEN[::-1]], ids=["no-token", "wrong-token"])
def test_auth_failure_never_shows_the_token(
    http_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, token: str | None
):
    caplog.set_level(logging.DEBUG)
    source = GitSource(http_url, "main", tmp_path / "cache", token=token)
    with pytest.raises(SyncError, match="authentication failed") as excinfo:
        source.fetch()
    if token:
        assert token not in str(excinfo.value)
        assert token not in caplog.text
        assert token not in repr(source)


def test_token_stays_out_of_argv_and_logs(remote: WorkClone, http_url: str, tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    source = GitSource(http_url, "main", tmp_path / "cache", token=TOKEN)
    argv, env = source.command("fetch", "--", http_url, "+refs/heads/main:refs/x")
    assert not any(TOKEN in arg for arg in argv)
    assert http_url in argv
    headers = [env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))]
    assert any(h.startswith("Authorization: Basic ") for h in headers)
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    source.fetch()
    assert TOKEN not in caplog.text
    assert source.scrub(f"header {headers[-1]} and {TOKEN}") == "header Authorization: Basic *** and ***"


def test_ssh_key_goes_through_ssh_command(tmp_path: Path):
    source = GitSource("git@github.com:org/tutorials.git", "main", tmp_path / "c", ssh_key="/keys/deploy key")
    argv, env = source.command("fetch")
    assert "deploy" not in " ".join(argv)
    ssh = env["GIT_SSH_COMMAND"]
    assert "-i '/keys/deploy key'" in ssh
    assert "IdentitiesOnly=yes" in ssh and "StrictHostKeyChecking=accept-new" in ssh


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@github.com/org/repo.git",
        f"https://{TOKEN}@github.com/org/repo.git",
        "http://x-access-token:abc@127.0.0.1/repo.git",
        "ssh://git:secret@github.com/org/repo.git",
    ],
    ids=["user-pass", "token-as-user", "http", "ssh-password"],
)
def test_url_with_credentials_is_rejected(url: str, tmp_path: Path):
    with pytest.raises(SyncError, match="token") as excinfo:
        GitSource(url, "main", tmp_path / "cache")
    assert "pass" not in str(excinfo.value).replace("password", "") and TOKEN not in str(excinfo.value)


@pytest.mark.parametrize(
    "url", ["ssh://git@github.com/org/repo.git", "git@github.com:org/repo.git", "https://github.com/o/r"]
)
def test_plain_urls_are_accepted(url: str, tmp_path: Path):
    GitSource(url, "main", tmp_path / "cache")


@pytest.mark.parametrize("url", ["--upload-pack=touch /tmp/x", ""], ids=["option", "empty"])
def test_malformed_url_rejected(url: str, tmp_path: Path):
    with pytest.raises(SyncError, match="malformed"):
        GitSource(url, "main", tmp_path / "cache")


def test_unreachable_remote(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = GitSource(f"http://127.0.0.1:{port}/tutorials.git", "main", tmp_path / "cache", token=TOKEN)
    with pytest.raises(SyncError, match="failed") as excinfo:
        source.fetch()
    assert TOKEN not in str(excinfo.value)


def test_silent_remote_times_out(tmp_path: Path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/tutorials.git"
        source = GitSource(url, "main", tmp_path / "cache", timeout=2)
        with pytest.raises(SyncError, match="timed out after 2 s"):
            source.fetch()


def test_tree_lists_modes_sizes_and_odd_names(remote: WorkClone, tmp_path: Path):
    remote.write("bin/run.sh", "#!/bin/sh\n", executable=True)
    remote.symlink("latest", "bin")
    odd = os.fsdecode(b"caf\xe9-latin1.txt")  # not UTF-8: kept byte for byte
    (remote.path / odd).write_bytes(b"x")
    sha = remote.commit_and_push()
    source = GitSource(str(remote.bare), "main", tmp_path / "cache")
    assert source.fetch() == sha
    entries = {e.path: e for e in source.tree(sha)}
    assert set(entries) == {"README.md", "bin/run.sh", "latest", odd}
    assert (entries["bin/run.sh"].mode, entries["bin/run.sh"].size) == ("100755", 10)
    assert (entries["latest"].mode, entries["latest"].type) == ("120000", "blob")
    assert os.fsencode(odd) == b"caf\xe9-latin1.txt"


def test_read_blobs_streams_in_chunks(remote: WorkClone, tmp_path: Path):
    big = os.urandom(3 * 1024 * 1024 + 7)
    remote.write("data/big.bin", big)
    remote.write("small.txt", "small")
    sha = remote.commit_and_push()
    source = GitSource(str(remote.bare), "main", tmp_path / "cache")
    source.fetch()
    entries = {e.path: e for e in source.tree(sha)}
    order = ["data/big.bin", "README.md", "small.txt"]
    blobs = source.read_blobs(entries[p].oid for p in order)
    first = next(blobs)
    sizes = [len(c) for c in first.chunks(chunk_size=65536)]
    assert first.size == len(big) and sum(sizes) == len(big) and max(sizes) <= 65536
    next(blobs)  # README.md left unread: drained before the next one
    assert next(blobs).read() == b"small"
    with pytest.raises(StopIteration):
        next(blobs)


def test_read_blobs_missing_object(remote: WorkClone, tmp_path: Path):
    source = GitSource(str(remote.bare), "main", tmp_path / "cache")
    source.fetch()
    with pytest.raises(SyncError, match="missing"):
        list(source.read_blobs(["0" * 40]))


def test_git_children_see_none_of_the_services_secrets(
    remote: WorkClone, http_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A fake ``git`` first on PATH records the environment each git process gets, then runs git."""
    record = tmp_path / "envs"
    record.mkdir()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    real_git = shutil.which("git")
    wrapper = fake_bin / "git"
    wrapper.write_text(f'#!/bin/sh\nenv -0 > "{record}/$$.env"\necho "$1" > "{record}/$$.arg"\nexec {real_git} "$@"\n')
    wrapper.chmod(0o755)
    secrets = {
        "JUPYTERHUB_API_TOKEN": "hub-token-9d1c",
        "GPUHUB_WEBHOOK_SECRET": "webhook-secret-77af",
        "GPUHUB_TUTORIALS_TOKEN": TOKEN,
        "JUPYTERHUB_CLIENT_ID": "service-tutorial-sync",
        "GIT_DIR": str(tmp_path / "elsewhere"),
        "GIT_CONFIG_PARAMETERS": "'core.sshcommand'='touch /tmp/pwned'",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    source = GitSource(http_url, "main", tmp_path / "cache", token=TOKEN)
    sha = source.fetch()
    assert sha == git("rev-parse", "refs/heads/main", cwd=remote.bare)
    ours = [f for f in record.glob("*.arg") if f.read_text().strip() == f"--git-dir={tmp_path / 'cache'}"]
    envs = [
        dict(item.split("=", 1) for item in f.with_suffix(".env").read_text().split("\0") if "=" in item)
        for f in ours
    ]
    assert len(envs) >= 3  # init, fetch, rev-parse: each through the fake (the test's own git too)
    for env in envs:
        for key, value in secrets.items():
            assert key not in env
            assert all(value not in v for v in env.values() if key != "GPUHUB_TUTORIALS_TOKEN")
        assert not any(TOKEN in v for v in env.values())  # only its base64 header form travels
        assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["PATH"].startswith(str(fake_bin))


def test_fetch_refuses_malformed_objects(tmp_path: Path):
    """transfer.fsckObjects: a commit object with no author line is refused, nothing is fetched."""
    bare = make_bare(tmp_path / "srv" / "tutorials.git")
    clone = WorkClone(bare, tmp_path / "work")
    clone.write("README.md", "# Tutorials\n")
    good = clone.commit_and_push("good")
    tree = git("rev-parse", f"{good}^{{tree}}", cwd=bare)
    body = f"tree {tree}\nparent {good}\ncommitter Eve <eve@example.invalid> 1700000000 +0000\n\nno author\n"
    bad = git("hash-object", "--literally", "-t", "commit", "-w", "--stdin", cwd=bare, stdin=body.encode())
    git("update-ref", "refs/heads/main", bad, cwd=bare)
    with serve_http(bare.parent) as base:
        source = GitSource(f"{base}/tutorials.git", "main", tmp_path / "cache")
        with pytest.raises(SyncError, match="malformed Git objects") as excinfo:
            source.fetch()
    assert "Traceback" not in str(excinfo.value)
    assert subprocess.run(
        ["git", f"--git-dir={tmp_path / 'cache'}", "cat-file", "-e", bad], capture_output=True
    ).returncode != 0
