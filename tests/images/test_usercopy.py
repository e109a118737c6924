"""Tests for images/singleuser/gpuhub_usercopy.py, the tutorial copy run inside each user container.

The module is loaded from its file path rather than imported from the package: it ships as
a standalone script, so the tests exercise exactly that file with no package context.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

MODULE_PATH = Path(__file__).resolve().parents[2] / "images" / "singleuser" / "gpuhub_usercopy.py"


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpuhub_usercopy_under_test", MODULE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while decorating
    spec.loader.exec_module(module)
    return module


usercopy = _load_module()
MANIFEST = usercopy.MANIFEST_NAME


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _manifest(dst: Path) -> dict:
    return json.loads((dst / MANIFEST).read_text())


def _tree(root: Path) -> dict[str, str]:
    """Every regular file under root (manifest excluded) -> its text."""
    return {p.relative_to(root).as_posix(): p.read_text()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "tutorials", tmp_path / "my-tutorials"
    _write(src / "intro.ipynb", "intro v1")
    _write(src / "README.md", "readme v1")
    _write(src / "gpu" / "basics" / "cuda.ipynb", "cuda v1")
    return src, dst


def test_first_copy_copies_everything_and_records_hashes(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    report = usercopy.sync_copy(src, dst)
    assert sorted(report.copied) == ["README.md", "gpu/basics/cuda.ipynb", "intro.ipynb"]
    assert report.updated == report.conflicts == report.kept_deleted == report.skipped == []
    assert _tree(dst) == _tree(src)
    files = _manifest(dst)["files"]
    assert files == {rel: _sha(text) for rel, text in _tree(src).items()}
    assert report.summary() == "tutorial copy: 3 new"


def test_copied_files_are_owner_writable_even_from_read_only_source(
        dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    (src / "intro.ipynb").chmod(0o444)
    usercopy.sync_copy(src, dst)
    assert (dst / "intro.ipynb").stat().st_mode & 0o777 == 0o644


def test_rerun_is_idempotent(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    manifest_before = (dst / MANIFEST).read_bytes()
    stats_before = {p: p.stat().st_mtime_ns for p in dst.rglob("*")}
    report = usercopy.sync_copy(src, dst)
    assert sorted(report.unchanged) == sorted(_tree(src))
    assert report.copied == report.updated == report.conflicts == []
    assert (dst / MANIFEST).read_bytes() == manifest_before
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*")} == stats_before
    assert report.summary() == "tutorial copy: up to date (3 files)"


def test_upstream_update_propagates_to_unedited_files(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    _write(src / "gpu" / "basics" / "cuda.ipynb", "cuda v2")
    report = usercopy.sync_copy(src, dst)
    assert report.updated == ["gpu/basics/cuda.ipynb"]
    assert (dst / "gpu" / "basics" / "cuda.ipynb").read_text() == "cuda v2"
    assert _manifest(dst)["files"]["gpu/basics/cuda.ipynb"] == _sha("cuda v2")
    assert report.summary() == "tutorial copy: 1 updated"


@pytest.mark.parametrize(("rel", "sibling"), [
    ("intro.ipynb", "intro.upstream.ipynb"),
    ("README.md", "README.upstream.md"),
    ("gpu/basics/cuda.ipynb", "gpu/basics/cuda.upstream.ipynb"),
], ids=["notebook", "markdown", "nested"])
def test_user_edit_survives_upstream_update_and_sibling_appears(
        dirs: tuple[Path, Path], rel: str, sibling: str) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    base = _manifest(dst)["files"][rel]
    _write(dst / rel, "my notes")
    _write(src / rel, "upstream v2")
    report = usercopy.sync_copy(src, dst)
    assert report.conflicts == [rel]
    assert report.upstream_copies == {rel: sibling}
    assert (dst / rel).read_text() == "my notes"
    assert (dst / sibling).read_text() == "upstream v2"
    assert _manifest(dst)["files"][rel] == base  # still the version the user started from
    assert report.summary() == (
        f"tutorial copy: 1 conflict (your edits kept; new version saved as {sibling})")
    # A second start changes nothing and still tells the user.
    again = usercopy.sync_copy(src, dst)
    assert again.conflicts == [rel]
    assert (dst / rel).read_text() == "my notes"


def test_user_edit_without_upstream_change_is_left_alone(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    _write(dst / "intro.ipynb", "my notes")
    report = usercopy.sync_copy(src, dst)
    assert "intro.ipynb" in report.unchanged
    assert report.reasons["intro.ipynb"] == "edited-by-you"
    assert report.conflicts == []
    assert not (dst / "intro.upstream.ipynb").exists()
    assert (dst / "intro.ipynb").read_text() == "my notes"


def _conflict_on_intro(src: Path, dst: Path) -> None:
    """The user edits intro.ipynb, upstream changes it too, and a start saves intro.upstream.ipynb."""
    usercopy.sync_copy(src, dst)
    _write(dst / "intro.ipynb", "my notes")
    _write(src / "intro.ipynb", "intro v2")
    usercopy.sync_copy(src, dst)


def test_upstream_sibling_is_refreshed_only_while_the_user_has_not_edited_it(
        dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    _conflict_on_intro(src, dst)
    sibling = dst / "intro.upstream.ipynb"
    _write(src / "intro.ipynb", "intro v3")
    usercopy.sync_copy(src, dst)
    assert sibling.read_text() == "intro v3"  # ours and untouched: refreshed
    _write(sibling, "my merge in progress")
    _write(src / "intro.ipynb", "intro v4")
    report = usercopy.sync_copy(src, dst)
    assert sibling.read_text() == "my merge in progress"
    assert report.upstream_copies == {"intro.ipynb": None}
    assert "has your edits" in report.detail_lines()[0]
    assert (dst / "intro.ipynb").read_text() == "my notes"


def test_deleted_upstream_sibling_is_not_recreated_for_the_same_version(
        dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    _conflict_on_intro(src, dst)
    (dst / "intro.upstream.ipynb").unlink()
    report = usercopy.sync_copy(src, dst)
    assert not (dst / "intro.upstream.ipynb").exists()
    assert report.conflicts == []
    _write(src / "intro.ipynb", "intro v3")
    report = usercopy.sync_copy(src, dst)
    assert (dst / "intro.upstream.ipynb").read_text() == "intro v3"
    assert report.conflicts == ["intro.ipynb"]


@pytest.mark.parametrize(("upstream_changes", "reason"), [
    (False, "kept-deleted"),
    (True, "upstream-changed-deleted-by-you"),
], ids=["upstream-same", "upstream-changed"])
def test_user_deleted_file_is_not_resurrected(
        dirs: tuple[Path, Path], upstream_changes: bool, reason: str) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    (dst / "intro.ipynb").unlink()
    if upstream_changes:
        _write(src / "intro.ipynb", "intro v2")
    for _ in range(2):
        report = usercopy.sync_copy(src, dst)
        assert not (dst / "intro.ipynb").exists()
        assert not (dst / "intro.upstream.ipynb").exists()
        assert report.kept_deleted == ["intro.ipynb"]
        assert report.reasons["intro.ipynb"] == reason
    assert "intro.ipynb" in _manifest(dst)["files"]
    assert "1 deleted by you (not restored)" in report.summary()


def test_user_created_same_name_file_is_not_overwritten(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _write(src / "intro.ipynb", "upstream")
    _write(src / "same.ipynb", "identical")
    _write(dst / "intro.ipynb", "the user's own file")
    _write(dst / "same.ipynb", "identical")
    report = usercopy.sync_copy(src, dst)
    assert (dst / "intro.ipynb").read_text() == "the user's own file"
    assert (dst / "intro.upstream.ipynb").read_text() == "upstream"
    assert report.conflicts == ["intro.ipynb"]
    assert report.unchanged == ["same.ipynb"]
    files = _manifest(dst)["files"]
    assert "intro.ipynb" not in files  # we never wrote it, so there is no base
    assert files["same.ipynb"] == _sha("identical")  # adopted
    # Once the user makes it match upstream it is adopted and follows upstream again.
    _write(dst / "intro.ipynb", "upstream")
    usercopy.sync_copy(src, dst)
    _write(src / "intro.ipynb", "upstream v2")
    assert usercopy.sync_copy(src, dst).updated == ["intro.ipynb"]


def test_files_removed_upstream_are_left_alone(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    (src / "README.md").unlink()
    usercopy.sync_copy(src, dst)
    assert (dst / "README.md").read_text() == "readme v1"


def test_symlinks_in_source_are_skipped_and_nothing_leaves_dst(tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    _write(src / "ok.ipynb", "ok")
    _write(outside / "secret.txt", "secret")
    (src / "link-to-file.txt").symlink_to(outside / "secret.txt")
    (src / "link-to-dir").symlink_to(outside, target_is_directory=True)
    (src / "dangling").symlink_to(tmp_path / "nowhere")
    report = usercopy.sync_copy(src, dst)
    assert report.copied == ["ok.ipynb"]
    assert sorted(report.skipped) == ["dangling", "link-to-dir", "link-to-file.txt"]
    assert {report.reasons[s] for s in report.skipped} == {"skipped-symlink"}
    assert _tree(dst) == {"ok.ipynb": "ok"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "outside", "src"]
    assert _tree(outside) == {"secret.txt": "secret"}


def test_destination_symlinked_dir_pointing_outside_is_skipped(tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    _write(src / "sub" / "a.ipynb", "a")
    _write(src / "inner" / "b.ipynb", "b")
    outside.mkdir()
    dst.mkdir()
    (dst / "sub").symlink_to(outside, target_is_directory=True)
    (dst / "real").mkdir()
    (dst / "inner").symlink_to(dst / "real", target_is_directory=True)  # stays inside DST
    report = usercopy.sync_copy(src, dst)
    assert report.skipped == ["sub/a.ipynb"]
    assert report.reasons["sub/a.ipynb"] == "skipped-symlink-outside-destination"
    assert list(outside.iterdir()) == []
    assert report.copied == ["inner/b.ipynb"]
    assert (dst / "real" / "b.ipynb").read_text() == "b"


def test_destination_file_replaced_by_symlink_is_never_written_through(
        dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    outside = _write(dst.parent / "outside.txt", "not yours to touch")
    (dst / "intro.ipynb").unlink()
    (dst / "intro.ipynb").symlink_to(outside)
    _write(src / "intro.ipynb", "intro v2")
    report = usercopy.sync_copy(src, dst)
    assert report.skipped == ["intro.ipynb"]
    assert outside.read_text() == "not yours to touch"
    assert (dst / "intro.ipynb").is_symlink()


def test_vcs_dirs_and_reserved_names_are_skipped(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _write(src / "a.ipynb", "a")
    _write(src / ".git" / "config", "[core]")
    _write(src / "sub" / ".ipynb_checkpoints" / "a-checkpoint.ipynb", "old")
    _write(src / MANIFEST, '{"files": {}}')
    report = usercopy.sync_copy(src, dst)
    assert report.copied == ["a.ipynb"]
    assert report.skipped == [MANIFEST]
    assert not (dst / ".git").exists()
    assert "files" in _manifest(dst)


@pytest.mark.parametrize("rel", [
    "../escape", "/etc/passwd", "a/../../b", "a//b", "./a", "", "a/.", "nul\x00l",
], ids=["dotdot", "absolute", "nested-dotdot", "empty-part", "dot", "empty", "trailing-dot",
        "nul"])
def test_unsafe_relative_paths_are_rejected(rel: str) -> None:
    assert not usercopy.is_safe_rel(rel)


def test_manifest_entries_with_unsafe_paths_are_dropped(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    data = _manifest(dst)
    data["files"]["../evil"] = "0" * 64
    (dst / MANIFEST).write_text(json.dumps(data))
    usercopy.sync_copy(src, dst)
    assert "../evil" not in _manifest(dst)["files"]


@pytest.mark.parametrize(("rel", "expected"), [
    ("intro.ipynb", "intro.upstream.ipynb"),
    ("a/b/data.tar.gz", "a/b/data.tar.upstream.gz"),
    ("Makefile", "Makefile.upstream"),
    (".bashrc", ".bashrc.upstream"),
], ids=["notebook", "nested-double-suffix", "no-suffix", "dotfile"])
def test_upstream_name(rel: str, expected: str) -> None:
    assert usercopy.upstream_name(rel) == expected


@pytest.mark.parametrize("content", ["{not json", "[]", '{"files": ["x"]}', "\xff"],
                         ids=["garbage", "list", "files-not-object", "not-utf8"])
def test_damaged_manifest_never_costs_user_edits(dirs: tuple[Path, Path], content: str) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    _write(dst / "intro.ipynb", "my notes")
    _write(src / "intro.ipynb", "intro v2")
    (dst / MANIFEST).write_bytes(content.encode("latin-1"))
    report = usercopy.sync_copy(src, dst)
    assert (dst / "intro.ipynb").read_text() == "my notes"
    assert report.conflicts == ["intro.ipynb"]
    assert report.warnings
    assert set(_manifest(dst)["files"]) == {"README.md", "gpu/basics/cuda.ipynb"}


def test_manifest_is_valid_json_after_every_run(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    steps = [lambda: None,
             lambda: _write(src / "intro.ipynb", "intro v2"),
             lambda: _write(dst / "README.md", "mine"),
             lambda: _write(src / "README.md", "readme v2"),
             lambda: (dst / "gpu" / "basics" / "cuda.ipynb").unlink()]
    for step in steps:
        step()
        usercopy.sync_copy(src, dst)
        data = _manifest(dst)
        assert data["version"] == usercopy.MANIFEST_VERSION
        assert all(len(h) == 64 for h in data["files"].values())
    assert not [p for p in dst.rglob(".gpuhub-tmp-*")]  # no temp files left behind


def test_conflict_summary_lists_many_siblings() -> None:
    report = usercopy.Report(copied=["n.ipynb"], conflicts=["a", "b", "c", "d", "e"])
    report.upstream_copies = {c: f"{c}.upstream" for c in report.conflicts}
    assert report.summary() == (
        "tutorial copy: 1 new, 5 conflicts (your edits kept; new versions saved as "
        "a.upstream, b.upstream, c.upstream and 2 more)")


@pytest.mark.parametrize("make_src", [
    lambda tmp: tmp / "missing",
    lambda tmp: _write(tmp / "a-file", "x"),
], ids=["missing", "not-a-directory"])
def test_main_returns_2_for_a_bad_src(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      make_src: Callable[[Path], Path]) -> None:
    src = make_src(tmp_path)
    assert usercopy.main([str(src), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "tutorials directory" in err and str(src) in err
    assert "Traceback" not in err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("argv", [[], ["only-one"], ["a", "b", "c"]],
                         ids=["none", "one", "three"])
def test_main_usage_errors_return_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert usercopy.main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_main_returns_2_when_dst_is_inside_src(dirs: tuple[Path, Path]) -> None:
    src, _ = dirs
    assert usercopy.main([str(src), str(src / "copy")]) == 2
    assert not (src / "copy").exists()


def test_main_returns_1_when_dst_cannot_be_created(
        dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = dirs
    _write(dst, "a file where the copy directory should be")
    assert usercopy.main([str(src), str(dst / "sub")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpuhub usercopy: cannot create copy directory")
    assert len(err.splitlines()) == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permission bits do not stop root")
def test_main_returns_1_when_dst_not_writable(
        dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = dirs
    dst.mkdir()
    dst.chmod(0o500)
    try:
        assert usercopy.main([str(src), str(dst)]) == 1
    finally:
        dst.chmod(0o700)
    assert "not writable" in capsys.readouterr().err


def test_main_prints_summary_and_one_line_per_conflict(
        dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    _write(dst / "intro.ipynb", "mine")
    _write(dst / "README.md", "mine")
    _write(src / "intro.ipynb", "intro v2")
    _write(src / "README.md", "readme v2")
    _write(src / "new.ipynb", "new")
    assert usercopy.main([str(src), str(dst)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == ("tutorial copy: 1 new, 2 conflicts (your edits kept; new versions "
                        "saved as README.upstream.md, intro.upstream.ipynb)")
    assert lines[1:] == [
        "  conflict: README.md: your edits kept; the new version is in README.upstream.md",
        "  conflict: intro.ipynb: your edits kept; the new version is in intro.upstream.ipynb",
    ]
    # the same report is left in the user's copy, where they will see it
    note = (dst / usercopy.REPORT_NAME).read_text().splitlines()
    assert note[:3] == [line for line in lines[:3]]
    assert note[3] == "  updated or new: new.ipynb"
    # and it is never mistaken for one of the user's edits or a tutorial on the next start
    assert usercopy.main([str(src), str(dst)]) == 0
    assert usercopy.REPORT_NAME not in _manifest(dst)["files"]
    assert _manifest(dst)["report"]["path"] == usercopy.REPORT_NAME


def test_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(MODULE_PATH.read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree)
             if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("script_name", ["usercopy.py", "gpuhub_usercopy.py"],
                         ids=["repo-file", "image-name"])
def test_runs_standalone_as_a_script(dirs: tuple[Path, Path], tmp_path: Path,
                                     script_name: str) -> None:
    src, dst = dirs
    script = MODULE_PATH
    if script_name != MODULE_PATH.name:  # as the image build installs it
        script = tmp_path / "bin" / script_name
        script.parent.mkdir()
        shutil.copyfile(MODULE_PATH, script)
    # -I: isolated mode, so neither the repository nor PYTHONPATH can supply imports.
    cmd = [sys.executable, "-I", str(script), str(src), str(dst)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "tutorial copy: 3 new"
    copied = _tree(dst)
    assert copied.pop("TUTORIAL-UPDATES.txt").startswith("tutorial copy: 3 new")
    assert copied == _tree(src)
    missing = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "nope"),
                              str(dst)], capture_output=True, text=True, check=False)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr


# -- the report file: never over a user's file, never in the way of a tutorial's ---------------

REPORT = usercopy.REPORT_NAME
REPORT_2 = "TUTORIAL-UPDATES-2.txt"


def _start(src: Path, dst: Path) -> None:
    """One container start, as the image's start script runs it."""
    assert usercopy.main([str(src), str(dst)]) == 0


def test_users_own_file_of_the_reports_name_is_never_overwritten(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    _write(dst / REPORT, "my own notes")
    for _ in range(2):
        _start(src, dst)
        assert (dst / REPORT).read_text() == "my own notes"
        note = (dst / REPORT_2).read_text()
        assert note.startswith("tutorial copy: ")
        assert f"note: {REPORT} is your file or a tutorial's, so this report is in {REPORT_2}" in note
    assert _manifest(dst)["report"]["path"] == REPORT_2
    # once the name is free again the report goes back to it, and the stand-in is removed
    (dst / REPORT).unlink()
    _start(src, dst)
    assert (dst / REPORT).read_text().startswith("tutorial copy: ")
    assert not (dst / REPORT_2).exists()


def test_report_the_user_edited_becomes_theirs(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    _start(src, dst)
    assert (dst / REPORT).read_text().startswith("tutorial copy: 3 new")
    _write(dst / REPORT, "tutorial copy: my notes on what changed\n")
    _start(src, dst)
    assert (dst / REPORT).read_text() == "tutorial copy: my notes on what changed\n"
    assert (dst / REPORT_2).read_text().startswith("tutorial copy: up to date")


@pytest.mark.parametrize("when", ["from-the-start", "added-later"])
def test_upstream_file_of_the_reports_name_is_delivered(dirs: tuple[Path, Path], when: str) -> None:
    src, dst = dirs
    if when == "added-later":
        _start(src, dst)  # our report now holds the name
    _write(src / REPORT, "what changed in the tutorials, by the authors")
    _start(src, dst)
    assert (dst / REPORT).read_text() == "what changed in the tutorials, by the authors"
    assert not (dst / usercopy.upstream_name(REPORT)).exists()
    assert (dst / REPORT_2).read_text().startswith("tutorial copy: ")
    assert _manifest(dst)["files"][REPORT] == _sha("what changed in the tutorials, by the authors")
    # it follows upstream like any tutorial file
    _write(src / REPORT, "v2 of the authors' notes")
    _start(src, dst)
    assert (dst / REPORT).read_text() == "v2 of the authors' notes"


def test_report_left_by_the_old_script_is_taken_over_but_a_users_file_is_not(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    usercopy.sync_copy(src, dst)
    data = _manifest(dst)
    data["version"] = 1  # as the old script left it: no record of the report
    del data["report"]
    (dst / MANIFEST).write_text(json.dumps(data))
    _write(dst / REPORT, "tutorial copy: 3 new\n  updated or new: README.md\n")
    _start(src, dst)
    assert (dst / REPORT).read_text().startswith("tutorial copy: up to date")
    assert not (dst / REPORT_2).exists()

    (dst / MANIFEST).write_text(json.dumps(data))
    _write(dst / REPORT, "tutorial copy: my own notes\nwith lines of my own\n")
    _start(src, dst)
    assert (dst / REPORT).read_text() == "tutorial copy: my own notes\nwith lines of my own\n"
    assert (dst / REPORT_2).exists()


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None

if given is not None:
    _NAMES = [REPORT, REPORT_2, "TUTORIAL-UPDATES-3.txt", "a.txt", "sub/TUTORIAL-UPDATES.txt"]
    _OPS = st.one_of(
        st.tuples(st.just("upstream-write"), st.sampled_from(_NAMES), st.integers(0, 3)),
        st.tuples(st.just("upstream-delete"), st.sampled_from(_NAMES), st.just(0)),
        st.tuples(st.just("user-write"), st.sampled_from(_NAMES), st.integers(0, 3)),
        st.tuples(st.just("user-delete"), st.sampled_from(_NAMES), st.just(0)),
        st.tuples(st.just("start"), st.just(""), st.just(0)),
    )

    @settings(max_examples=400, deadline=None)
    @given(st.lists(_OPS, min_size=1, max_size=30))
    def test_random_sequences_never_lose_a_user_file_and_deliver_every_untouched_tutorial(ops) -> None:
        """Any interleaving of authors' pushes, user edits and starts: a file the user wrote keeps
        its content; an upstream file at a path the user never touched arrives; one report exists."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "src", Path(tmp) / "dst"
            src.mkdir()
            upstream: dict[str, str] = {}
            users: dict[str, str | None] = {}  # path -> what the user last wrote (None: deleted)
            for op, name, n in [*ops, ("start", "", 0)]:
                if op == "upstream-write":
                    upstream[name] = f"upstream {name} #{n}"
                    _write(src / name, upstream[name])
                elif op == "upstream-delete" and name in upstream:
                    del upstream[name]
                    (src / name).unlink()
                elif op == "user-write" and dst.is_dir():
                    users[name] = f"user {name} #{n}"
                    _write(dst / name, users[name])
                elif op == "user-delete" and (dst / name).is_file():
                    users[name] = None
                    (dst / name).unlink()
                elif op == "start":
                    _start(src, dst)
                    for path, text in users.items():
                        if text is not None:
                            assert (dst / path).read_text() == text, f"the user's {path} was changed"
                    for path, text in upstream.items():
                        if path not in users:
                            assert (dst / path).read_text() == text, f"upstream {path} not delivered"
                    report = _manifest(dst)["report"]["path"]
                    assert report not in upstream and users.get(report) is None
                    assert (dst / report).read_text().startswith("tutorial copy: ")
