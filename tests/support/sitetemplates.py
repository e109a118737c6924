"""Template folders as an operator writes them (``c.JupyterHub.template_paths``), for tests."""

from __future__ import annotations

from pathlib import Path


def template_folders(root: Path, folders: dict[str, dict[str, str]]) -> list[str]:
    """Make ``{folder: {file name: text}}`` under ``root``; returns the folders' paths in search order."""
    paths = []
    for folder, files in folders.items():
        path = root / folder
        path.mkdir()
        for name, text in files.items():
            (path / name).write_text(text)
        paths.append(str(path))
    return paths
