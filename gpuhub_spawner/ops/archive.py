"""The backup archive on disk: written mode 0600 from the start, read back only after checking.

Writing goes to a temporary file created 0600 (never a window where another user could open
it) beside the destination, renamed into place when complete: a crash leaves no half archive
under the final name.  Reading accepts only plain files with names of the known sections
(:func:`gpuhub_spawner.ops.manifest.safe_member`): no links, devices, absolute paths or ``..``;
each is extracted 0600 into a private folder, hashed, and the whole set is checked against
the manifest before anything uses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

from gpuhub_spawner.ops import manifest as mf
from gpuhub_spawner.ops.manifest import OpsError


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(out: Path, staging: Path, manifest: dict[str, Any]) -> None:
    """Write the archive ``out``: the manifest, then every member it lists (from ``staging``)."""
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(mf.MANIFEST)
            info.size, info.mode = len(body), 0o600
            tar.addfile(info, io.BytesIO(body))
            for name in manifest["files"]:
                info = tar.gettarinfo(str(staging / name), arcname=name)
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
                with open(staging / name, "rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(out, 0o600)


def read(path: Path, into: Path) -> dict[str, Any]:
    """Extract the archive ``path`` into ``into`` (a private folder) and check it; its manifest.

    Raises :class:`OpsError` naming every problem for a corrupt, tampered or foreign archive.
    """
    try:
        found, manifest = _extract(path, into)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise OpsError(f"{path} is not a readable gpuhub backup ({e.__class__.__name__}: {e}). Nothing was changed.") from None
    problems = mf.check(manifest, found)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise OpsError(f"refusing {path}: {shown}. Nothing was changed; use an intact backup made by gpuhub backup.")
    return manifest


def _extract(path: Path, into: Path) -> tuple[dict[str, str], Any]:
    found: dict[str, str] = {}
    manifest: Any = None
    with tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            if member.isdir():
                continue
            if not member.isfile() or not mf.safe_member(member.name):
                raise OpsError(f"refusing {path}: it holds {member.name!r}, which no gpuhub backup holds. Nothing was changed.")
            data = tar.extractfile(member)
            assert data is not None  # a regular file
            if member.name == mf.MANIFEST:
                try:
                    manifest = json.loads(data.read(1 << 22))
                except ValueError:
                    raise OpsError(f"refusing {path}: its manifest.json is not JSON. Nothing was changed.") from None
                continue
            target = into / member.name
            target.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(data, out, 1 << 20)
            found[member.name] = sha256(target)
    return found, manifest
