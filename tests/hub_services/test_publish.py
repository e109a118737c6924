"""publish() against real Git repositories, including hostile trees crafted with git plumbing."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from gitserver import WorkClone, crafted_commit, make_bare
from prometheus_client import generate_latest

from hub_services.tutorial_sync.gitsource import GitSource, SyncError
from hub_services.tutorial_sync.publish import (
    CommitLimits,
    PublishReport,
    current_version,
    escaping_links,
    path_problem,
    publish,
)


@pytest.fixture
def remote(tmp_path: Path) -> WorkClone:
    clone = WorkClone(make_bare(tmp_path / "srv" / "tutorials.git"), tmp_path / "work")
    clone.write("README.md", "# Tutorials\n")
    return clone


@pytest.fixture
def source(remote: WorkClone, tmp_path: Path) -> GitSource:
    return GitSource(str(remote.bare), "main", tmp_path / "cache")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def sync(source: GitSource, store: Path, **kw) -> PublishReport:
    return publish(source, source.fetch(), store, **kw)


def versions(store: Path) -> set[str]:
    return {p.name for p in (store / "versions").iterdir()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize(
    "path, problem",
    [
        ("lessons/01.ipynb", None),
        (".github/ci.yml", None),
        ("a..b/.hidden", None),
        ("/etc/passwd", "absolute path"),
        ("a/../b", "path component '..' is not allowed"),
        ("./a", "path component '.' is not allowed"),
        ("a//b", "path component '' is not allowed"),
        ("a/", "path component '' is not allowed"),
        (".git/config", "paths inside .git are not published"),
        ("x/.GiT/hooks/pre-commit", "paths inside .git are not published"),
        ("a" * 256, "file name longer than 255 bytes"),
    ],
    ids=["plain", "dot-github", "dots-in-name", "absolute", "dotdot", "dot", "empty", "trailing-slash",
         "dot-git", "dot-git-mixed-case", "long-name"],
)  # fmt: skip
def test_path_problem(path: str, problem: str | None):
    assert path_problem(path) == problem


@pytest.mark.parametrize(
    "links, escaping",
    [
        ({"a": "b"}, set()),
        ({"d/up": ".."}, set()),
        ({"d/e/up2": "../.."}, set()),
        ({"d/out": "../.."}, {"d/out"}),
        ({"d/up": "..", "x": "d/up/.."}, {"x"}),
        ({"d/up": "..", "x": "d/up/d/up/README"}, set()),
        ({"l": "l/x"}, {"l"}),
        ({"a": "b", "b": "a"}, {"a", "b"}),
        ({"a": "x/../../y"}, {"a"}),
        ({"v": "v2", "docs/s": "../v/nb"}, set()),
    ],
    ids=["sibling", "up-to-root", "up-two-to-root", "above-root", "through-link", "through-link-twice",
         "self-loop", "cycle", "lexical-escape", "chain-inside"],
)  # fmt: skip
def test_escaping_links(links: dict[str, str], escaping: set[str]):
    assert escaping_links(links) == escaping


def test_publish_creates_version_and_current(remote: WorkClone, source: GitSource, store: Path):
    remote.write("lessons/01-intro.ipynb", '{"cells": []}')
    remote.write("lessons/data/train.csv", "a,b\n1,2\n")
    sha = remote.commit_and_push()
    report = sync(source, store)
    assert (report.sha, report.published, report.files, report.refused) == (sha, True, 3, [])
    assert report.bytes == len("# Tutorials\n") + len('{"cells": []}') + len("a,b\n1,2\n")
    assert os.readlink(store / "current") == f"versions/{sha}"
    assert current_version(store) == sha
    assert (store / "current" / "lessons" / "data" / "train.csv").read_text() == "a,b\n1,2\n"
    assert os.listdir(store / ".staging") == []


def test_non_utf8_names_are_published_byte_for_byte(remote: WorkClone, source: GitSource, store: Path):
    raw = b"caf\xe9 notes.txt"
    (remote.path / os.fsdecode(raw)).write_bytes(b"latin-1 name")
    sha = remote.commit_and_push()
    assert sync(source, store).refused == []
    assert (store / "versions" / sha / os.fsdecode(raw)).read_bytes() == b"latin-1 name"
    assert raw in os.listdir(os.fsencode(store / "current"))


def test_modes_and_no_git_directory(remote: WorkClone, source: GitSource, store: Path):
    remote.write("bin/setup.sh", "#!/bin/sh\necho hi\n", executable=True)
    remote.write(".gitignore", "*.pyc\n")
    remote.write(".github/workflows/ci.yml", "on: push\n")
    sha = remote.commit_and_push()
    sync(source, store)
    tree = store / "versions" / sha
    assert mode(tree / "bin" / "setup.sh") == 0o755
    assert mode(tree / "README.md") == mode(tree / ".gitignore") == 0o644
    assert mode(tree) == mode(tree / "bin") == mode(tree / ".github" / "workflows") == 0o755
    assert not (tree / ".git").exists()
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()) == [
        ".github/workflows/ci.yml",
        ".gitignore",
        "README.md",
        "bin/setup.sh",
    ]


def test_safe_symlinks_are_kept(remote: WorkClone, source: GitSource, store: Path):
    remote.write("v2/notebook.ipynb", "{}")
    remote.symlink("latest", "v2")
    remote.symlink("docs/start.ipynb", "../latest/notebook.ipynb")
    remote.symlink("docs/up", "..")
    remote.symlink("readme-link", "./docs/up/README.md")
    sha = remote.commit_and_push()
    report = sync(source, store)
    assert report.refused == []
    tree = store / "versions" / sha
    assert os.readlink(tree / "latest") == "v2"
    assert os.readlink(tree / "docs" / "start.ipynb") == "../latest/notebook.ipynb"
    assert (tree / "docs" / "start.ipynb").read_text() == "{}"
    assert (tree / "readme-link").read_text() == "# Tutorials\n"


def test_hostile_tree_is_refused_entry_by_entry(
    remote: WorkClone, source: GitSource, store: Path, tmp_path: Path
):
    canary = tmp_path / "canary"
    canary.mkdir()
    remote.commit_and_push()
    blob = b"owned\n"
    sha = crafted_commit(
        remote.bare,
        [
            ("ok/kept.txt", "100644", b"fine\n"),
            ("abs-link", "120000", b"/etc/passwd"),
            ("lessons/passwd", "120000", b"../../etc/passwd"),
            ("a/../../canary/dotdot.txt", "100644", blob),
            ("../canary/top.txt", "100644", blob),
            (".git/config", "100644", b"[core]\n"),
            ("sub/.GIT/hooks/post-checkout", "100755", blob),
            ("huge.bin", "100644", b"x" * 5000),
            ("evil", "120000", b"../canary"),
            ("evil/pwned.txt", "100644", blob),
            ("d/up", "120000", b".."),
            ("chain", "120000", b"d/up/.."),
            ("loop", "120000", b"loop/x"),
            ("vendored", "160000", b"1" * 40),
        ],
    )
    report = publish(source, source.fetch(), store, max_file_bytes=1000)
    refused = dict(report.refused)
    assert refused.keys() == {
        "abs-link",
        "lessons/passwd",
        "a/../../canary/dotdot.txt",
        "../canary/top.txt",
        ".git/config",
        "sub/.GIT/hooks/post-checkout",
        "huge.bin",
        "evil",
        "chain",
        "loop",
        "vendored",
    }
    assert "absolute" in refused["abs-link"] and "leaves the tree" in refused["lessons/passwd"]
    assert (
        "'..'" in refused["a/../../canary/dotdot.txt"] and ".git" in refused["sub/.GIT/hooks/post-checkout"]
    )
    assert "limit of 1000 bytes" in refused["huge.bin"] and "submodule" in refused["vendored"]
    assert os.listdir(canary) == []
    assert sorted(os.listdir(tmp_path)) == ["cache", "canary", "srv", "store", "work"]
    tree = store / "versions" / sha
    assert (tree / "ok" / "kept.txt").read_text() == "fine\n"
    assert (tree / "evil").is_dir() and not (tree / "evil").is_symlink()
    assert (tree / "evil" / "pwned.txt").read_bytes() == blob
    assert os.readlink(tree / "d" / "up") == ".."
    assert sorted(os.listdir(tree)) == ["d", "evil", "ok"]


def test_keep_prunes_old_versions_but_never_current(remote: WorkClone, source: GitSource, store: Path):
    shas = []
    for i in range(4):
        remote.write("marker.txt", f"version {i}\n")
        shas.append(remote.commit_and_push(f"v{i}"))
        sync(source, store, keep=2)
    assert versions(store) == set(shas[2:])
    remote.bare.joinpath("refs", "heads", "main").write_text(shas[0] + "\n")  # roll back past pruning
    report = sync(source, store, keep=2)
    assert report.published and current_version(store) == shas[0]
    assert versions(store) == {shas[0], shas[3]}
    assert sync(source, store, keep=1).published is False
    remote.bare.joinpath("refs", "heads", "main").write_text(shas[3] + "\n")
    sync(source, store, keep=1)
    assert versions(store) == {shas[3]} and current_version(store) == shas[3]
    assert sorted(os.listdir(store / ".meta")) == [f"{shas[3]}.json"]


def test_republish_existing_version_skips_rebuild(remote: WorkClone, source: GitSource, store: Path):
    remote.write("big.txt", "x" * 20)
    first = remote.commit_and_push()
    report = sync(source, store, max_file_bytes=12)
    assert report.refused == [("big.txt", "file larger than the limit of 12 bytes (20 bytes)")]
    again = sync(source, store)
    assert (again.published, again.files, again.refused) == (False, 1, report.refused)
    remote.write("b.txt", "b")
    second = remote.commit_and_push()
    sync(source, store)
    inode = (store / "versions" / first).stat().st_ino
    remote.bare.joinpath("refs", "heads", "main").write_text(first + "\n")
    back = sync(source, store)
    assert back.published and back.files == 1 and (store / "versions" / first).stat().st_ino == inode
    assert current_version(store) == first and versions(store) == {first, second}


def test_leftover_staging_is_cleared_and_bad_arguments_refused(source: GitSource, store: Path, remote):
    remote.commit_and_push()
    (store / ".staging" / "deadbeef-crashed" / "x").mkdir(parents=True)
    sync(source, store)
    assert os.listdir(store / ".staging") == []
    with pytest.raises(SyncError, match="full commit sha"):
        publish(source, "HEAD", store)
    with pytest.raises(SyncError, match="keep must be at least 1"):
        publish(source, current_version(store) or "", store, keep=0)
    assert current_version(store / "nowhere") is None


def test_readers_pinning_current_never_see_a_mixed_tree(remote: WorkClone, source: GitSource, store: Path):
    nfiles = 200
    names = [f"part{i // 50}/file{i:03d}.txt" for i in range(nfiles)]
    for name in names:
        remote.write(name, "version 0\n")
    remote.commit_and_push()
    sync(source, store)
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            fd = os.open(store / "current", os.O_RDONLY | os.O_DIRECTORY)
            try:
                markers = set()
                for name in names:
                    f = os.open(name, os.O_RDONLY, dir_fd=fd)
                    try:
                        markers.add(os.read(f, 100).decode())
                    finally:
                        os.close(f)
            except OSError as e:
                errors.append(f"read failed: {e}")
                return
            finally:
                os.close(fd)
            if len(markers) != 1:
                errors.append(f"mixed versions in one read: {sorted(markers)}")
            seen.update(markers)
            reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for v in range(1, 11):
            for name in names:
                remote.write(name, f"version {v}\n")
            remote.commit_and_push(f"v{v}")
            sync(source, store)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert errors == []
    print(f"{reads[0]} consistent reads of {nfiles} files, {len(seen)} versions seen")
    assert reads[0] > 10 and len(seen) > 2
    assert (store / "current" / names[-1]).read_text() == "version 10\n"


@pytest.mark.parametrize(
    "limits, files, problem",
    [
        pytest.param(CommitLimits(max_total_bytes=100), {"a.bin": 60, "b.bin": 60}, "132 bytes", id="total-size"),
        pytest.param(CommitLimits(max_files=3), {f"f{i}.txt": 1 for i in range(4)}, "5 files", id="file-count"),
    ],
)
def test_commit_over_a_total_limit_is_refused_whole(
    remote: WorkClone, source: GitSource, store: Path, limits: CommitLimits, files: dict[str, int], problem: str
):
    first = remote.commit_and_push("small")
    sync(source, store, limits=limits)
    for name, size in files.items():
        remote.write(name, "x" * size)
    big = remote.commit_and_push("too big")
    with pytest.raises(SyncError, match=f"Commit {big[:12]} was not published: .*{problem}, over the limit"):
        sync(source, store, limits=limits)
    assert current_version(store) == first and versions(store) == {first}
    assert os.listdir(store / ".staging") == []
    # files left out for their own size do not count against the total
    assert sync(source, store, max_file_bytes=10, limits=CommitLimits(max_total_bytes=100)).published


async def test_syncer_reports_a_refused_commit_and_keeps_the_current_one(
    remote: WorkClone, source: GitSource, store: Path
):
    from hub_services.tutorial_sync.app import Syncer

    syncer = Syncer(source, store, 10**6, 3, "repo", CommitLimits(max_files=2))
    first = remote.commit_and_push()
    assert (await syncer.run_once("test")).commit == first
    for i in range(3):
        remote.write(f"lesson{i}.ipynb", "{}")
    remote.commit_and_push("three more")
    status = await syncer.run_once("test")
    assert status.commit == first == current_version(store)
    assert "was not published: it has 4 files, over the limit of 2 (max_files)" in status.last_error
    assert 'gpuhub_tutorial_sync_runs_total{result="error"} 1.0' in generate_latest(syncer.metrics.registry).decode()


def test_new_version_is_fsynced_into_versions_before_current_moves(
    remote: WorkClone, source: GitSource, store: Path, monkeypatch: pytest.MonkeyPatch
):
    """Records which directories are fsynced, in order, with what they held at that moment.

    A crash-consistency test (power cut between rename and write-back) is not feasible here,
    so this checks the code path: versions/ is fsynced after the version is renamed into it
    and before ``current`` is switched to it.
    """
    sha = remote.commit_and_push()
    paths: dict[int, str] = {}
    synced: list[tuple[str, list[str], str | None]] = []
    real_open, real_fsync = os.open, os.fsync

    def recording_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        paths[fd] = os.fspath(path)
        return fd

    def recording_fsync(fd):
        path = paths.get(fd, "")
        if os.path.isdir(path):
            synced.append((path, sorted(os.listdir(path)), current_version(store)))
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    sync(source, store)
    assert (str(store / "versions"), [sha], None) in synced
    order = [p for p, _, _ in synced]
    assert order.index(str(store / "versions")) < order.index(str(store))
    assert synced[order.index(str(store))][2] == sha  # the store itself after the switch
