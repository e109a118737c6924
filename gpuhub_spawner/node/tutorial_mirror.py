"""The tutorial mirror: the hub's published tutorials on this node, without shared storage.

On a swarm every node must show servers the same tutorial store at the same path.  Where no NFS
is at hand, one mirror runs on each node (a global swarm service, from the node agent's image:
it is on every GPU node already and holds core + node, all this needs).  It polls the
tutorial-sync service's ``bundle`` endpoint with ``?have=<its current commit>`` (a 304 while
nothing changed), and when a new commit is published it fetches it as a tar stream and publishes
it into the node's store with the same layout and steps as the sync service
(:mod:`gpuhub_spawner.core.tutorial_store`): built in ``.staging``, flushed, renamed into
``versions/<commit>``, ``current`` switched by one rename, the newest ``keep`` kept.  Servers
mount the store read-only, so a running server sees a new commit within one poll interval plus
the transfer.

The token (``--token-file``) is the ``tutorial-mirror`` service's: its only scope is
``custom:gpuhub-tutorials:read``.  Everything in the stream is checked again here before it is
written: paths stay inside the tree, only files, directories and symlinks whose targets stay
inside it, and a size cap; a bad bundle is refused whole and the current version stays.

    python -m gpuhub_spawner.node.tutorial_mirror --url https://HUB/services/tutorial-sync/bundle \\
        --token-file /run/secrets/tutorial_mirror_token --store /srv/gpuhub/tutorials
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import secrets
import shutil
import signal
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests

from gpuhub_spawner.core import tutorial_store as store_ops

log = logging.getLogger("gpuhub.tutorial_mirror")
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class MirrorError(Exception):
    """This poll did not bring the node up to date; the current version stays."""


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 10 << 30
    max_files: int = 100_000


def member_problem(name: str) -> str | None:
    """Why a bundle entry's path may not be written, or None (relative, no ``..``, no ``.git``)."""
    if not name or name.startswith("/"):
        return "absolute or empty path"
    for part in name.split("/"):
        if part in ("", ".", "..") or part.casefold() == ".git" or "\0" in part:
            return f"path component {part!r} is not allowed"
    return None


def link_problem(name: str, target: str, links: set[str]) -> str | None:
    """Why symlink ``name -> target`` may not be written: it must be relative and, read as
    written, stay inside the tree without passing through another link of the bundle."""
    if not target or target.startswith("/") or "\0" in target:
        return "symlink with an absolute, empty or malformed target"
    parts: list[str] = posixpath.dirname(name).split("/") if "/" in name else []
    for part in target.split("/"):
        if part == "..":
            if not parts:
                return f"symlink target {target!r} leaves the tree"
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
            if "/".join(parts) in links:
                return f"symlink target {target!r} passes through another symlink"
    return None


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def extract(stream: IO[bytes], staging: Path, limits: Limits) -> int:
    """Write the tar ``stream`` into the empty directory ``staging``; the number of entries.

    Links are made last, so no write ever goes through one; files are created with O_EXCL and
    O_NOFOLLOW.  :class:`MirrorError` for anything not allowed (the caller drops ``staging``).
    """
    links: dict[str, str] = {}
    total = count = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = _normal(member.name)
            if not name:
                continue
            problem = member_problem(name)
            if problem is None and not (member.isfile() or member.isdir() or member.issym()):
                problem = "only files, directories and symlinks are mirrored"
            if problem:
                raise MirrorError(f"the bundle holds {name!r}: {problem}")
            count += 1
            total += member.size if member.isfile() else 0
            if count > limits.max_files or total > limits.max_total_bytes:
                raise MirrorError(f"the bundle is larger than this mirror's limits ({limits.max_files} files, "
                                  f"{limits.max_total_bytes} bytes): raise --max-total-mb / --max-files")
            path = staging / name
            if member.isdir():
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
            elif member.issym():
                links[name] = member.linkname
            else:
                path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                _write_file(path, tar.extractfile(member), 0o755 if member.mode & 0o111 else 0o644)
    for name, target in sorted(links.items()):
        problem = link_problem(name, target, set(links))
        if problem:
            raise MirrorError(f"the bundle holds {name!r}: {problem}")
        (staging / name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.symlink(target, staging / name)
    return count


def _write_file(path: Path, data: IO[bytes] | None, mode: int) -> None:
    with open(os.open(path, FILE_FLAGS, 0o600), "wb") as out:
        if data is not None:
            shutil.copyfileobj(data, out, 1 << 20)
        os.fchmod(out.fileno(), mode)


@dataclass
class Mirror:
    url: str
    token: str
    store: Path
    keep: int = 3
    timeout: float = 60.0
    limits: Limits = Limits()

    def run_once(self) -> str | None:
        """Bring the store up to the published commit; that commit (None: nothing published)."""
        have = store_ops.current_version(self.store)
        try:
            r = requests.get(self.url, params={"have": have or ""}, stream=True, timeout=(10, self.timeout),
                             headers={"Authorization": f"token {self.token}"}, allow_redirects=False)
        except requests.RequestException as e:
            raise MirrorError(f"the tutorial-sync service did not answer: {type(e).__name__}") from None
        with r:
            if r.status_code in (401, 403):
                raise MirrorError(f"the hub refused the mirror's token ({r.status_code}): give the token of "
                                  "the tutorial-mirror service (tutorials.mirror_token_file in gpuhub.yaml)")
            if r.status_code == 404:
                return None
            sha = r.headers.get("X-Gpuhub-Commit", "")
            if r.status_code == 304 or (r.status_code == 200 and sha == have):
                return have
            if r.status_code != 200 or not store_ops.SHA_RE.match(sha):
                raise MirrorError(f"the tutorial-sync service answered {r.status_code} without a commit")
            self._install(sha, r.raw)
        return sha

    def _install(self, sha: str, stream: IO[bytes]) -> None:
        started = time.monotonic()
        store_ops.make_layout(self.store)
        with store_ops.locked(self.store):
            for leftover in (self.store / ".staging").iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
            if not (self.store / "versions" / sha).is_dir():
                staging = self.store / ".staging" / f"{sha}-{secrets.token_hex(4)}"
                os.mkdir(staging, 0o700)
                try:
                    files = extract(stream, staging, self.limits)
                    store_ops.write_meta(self.store, sha, {"sha": sha, "files": files, "source": "mirror"})
                    store_ops.commit_staged(self.store, staging, sha)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
            store_ops.switch(self.store, sha)
            pruned = store_ops.prune(self.store, self.keep, sha)
        log.info("Mirrored tutorial commit %s in %.1fs; pruned %d old versions", sha[:12],
                 time.monotonic() - started, len(pruned))

    def loop(self, interval: float) -> None:
        while True:
            try:
                self.run_once()
            except (MirrorError, OSError, tarfile.TarError) as e:
                log.warning("Tutorial mirror: %s; the current version stays, trying again in %.0fs", e, interval)
            time.sleep(interval)


def stack_service(image: str, bundle_url: str, store: str, secret: str, secret_source: str = "",
                  networks: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mirror as a service of a stack file (compose format): one task per node (global),
    the node's store bound read-write, the token as a swarm secret, no GPU."""
    service: dict[str, Any] = {
        "image": image,
        # the image's entrypoint is the node agent: replaced, and its arguments given as the command
        "entrypoint": ["python3", "-m", "gpuhub_spawner.node.tutorial_mirror"],
        "command": ["--url", bundle_url, "--token-file", f"/run/secrets/{secret}", "--store", store],
        "environment": {"NVIDIA_VISIBLE_DEVICES": "void"},
        "volumes": [{"type": "bind", "source": store, "target": store}],
        "secrets": [{"source": secret_source or secret, "target": secret}],
        "deploy": {"mode": "global", "restart_policy": {"condition": "any", "delay": "5s"}},
    }
    if networks:
        service["networks"] = list(networks)
    return service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuhub-tutorial-mirror", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the tutorial-sync service's bundle URL")
    parser.add_argument("--token-file", required=True, help="file holding the tutorial-mirror service's token")
    parser.add_argument("--store", required=True, help="this node's store (servers mount it read-only)")
    parser.add_argument("--interval", type=float, default=15, help="seconds between polls (default 15)")
    parser.add_argument("--keep", type=int, default=3, help="versions kept (default 3)")
    parser.add_argument("--max-total-mb", type=int, default=10240)
    parser.add_argument("--max-files", type=int, default=100_000)
    parser.add_argument("--once", action="store_true", help="poll once and exit (0: up to date)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as e:
        print(f"gpuhub-tutorial-mirror: cannot read --token-file {args.token_file}: {e.strerror}", file=sys.stderr)
        return 2
    mirror = Mirror(args.url, token, Path(args.store), max(1, args.keep),
                    limits=Limits(args.max_total_mb << 20, args.max_files))
    if args.once:
        try:
            print(mirror.run_once() or "nothing published yet")
        except (MirrorError, OSError, tarfile.TarError) as e:
            print(f"gpuhub-tutorial-mirror: {e}", file=sys.stderr)
            return 1
        return 0
    mirror.loop(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
