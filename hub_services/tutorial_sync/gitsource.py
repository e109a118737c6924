"""Follow one branch of a Git remote through a local bare mirror.

:class:`GitSource` fetches the branch into a bare repository kept in ``cache_dir`` and reads trees
and blobs from it with git's plumbing (``ls-tree``, one streaming ``cat-file --batch``).

Credentials never reach a URL, an argv, a log line or an exception message: an HTTPS token
travels as an ``http.extraHeader`` set through git's environment config, an SSH deploy key through
``GIT_SSH_COMMAND``, and any git output quoted in a :class:`SyncError` is scrubbed first.

git runs with a minimal environment (:data:`PASS_ENV`: search path, home, locale, proxies and
CA settings), never the service's own (hub API token, webhook secret), so no helper git starts
can read those; and with ``transfer.fsckObjects``, so a fetch of malformed objects is refused.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
ALLOWED_PROTOCOLS = "http:https:ssh:git:file"
CHUNK = 1 << 20
# The only variables of the service's environment git sees: where programs are, home, locale,
# how to reach the network (proxies) and which CAs to trust. Nothing else: the service holds its
# hub API token and the webhook secret in its environment, and git starts helpers (ssh, remote
# helpers, hooks) that would inherit them.
PASS_ENV = frozenset(
    "PATH HOME LANG TZ TMPDIR http_proxy https_proxy no_proxy all_proxy HTTP_PROXY HTTPS_PROXY"
    " NO_PROXY ALL_PROXY SSL_CERT_FILE SSL_CERT_DIR GIT_SSL_CAINFO GIT_SSL_CAPATH".split()
)
# Checks that publish.py makes itself, entry by entry, reporting each path it leaves out
# (``..``, ``.git``, duplicates, odd modes): with strict transfer checks they would turn one bad
# entry into a refused commit. Every other fsck check (malformed commits, trees, tags, broken
# links between objects) stays fatal.
PATH_FSCK_CHECKS = (
    "hasDot", "hasDotdot", "hasDotgit", "fullPathname", "emptyName", "duplicateEntries",
    "zeroPaddedFilemode", "badFilemode", "treeNotSorted",
)  # fmt: skip
# Lower-cased git/ssh messages that mean the remote refused our credentials (or wanted some).
AUTH_FAILURES = (
    "authentication failed", "could not read username", "could not read password",
    "returned error: 401", "returned error: 403", "permission denied (publickey",
)  # fmt: skip
# Lower-cased git messages that mean the fetched objects failed git's fsck checks.
FSCK_FAILURES = ("fsck error", "index-pack failed", "unpack-objects abnormal exit", "invalid object")


class SyncError(Exception):
    """Fetching or publishing tutorials failed; the message is safe to show and to log."""


@dataclass(frozen=True)
class TreeEntry:
    """One line of ``git ls-tree -r --long``: a blob, symlink or submodule of a commit."""

    mode: str
    type: str
    oid: str
    size: int | None
    path: str


class Blob:
    """A blob being streamed out of ``git cat-file --batch``; read it before taking the next one."""

    def __init__(self, oid: str, size: int, stream: IO[bytes], progress: _Watchdog) -> None:
        self.oid = oid
        self.size = size
        self._stream = stream
        self._left = size
        self._progress = progress

    def chunks(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The blob's content in chunks of at most ``chunk_size`` bytes."""
        while self._left:
            data = self._stream.read(min(chunk_size, self._left))
            if not data:
                raise SyncError(f"git cat-file ended in the middle of object {self.oid[:12]}")
            self._left -= len(data)
            self._progress.touch()
            yield data

    def read(self) -> bytes:
        """The whole content (for small blobs such as symlink targets)."""
        return b"".join(self.chunks())

    def drain(self) -> None:
        for _ in self.chunks():
            pass


class _Watchdog:
    """Kill a process group when it has made no progress for ``timeout`` seconds."""

    def __init__(self, proc: subprocess.Popen, timeout: float) -> None:
        self.proc = proc
        self.timeout = timeout
        self.fired = False
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.timeout)):
            if time.monotonic() - self._last > self.timeout:
                self.fired = True
                _kill_group(self.proc)
                return


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_url(url: str) -> None:
    """Refuse URLs git could mistake for options and URLs that carry credentials."""
    if not url or url.startswith("-") or any(c in url for c in "\0\n\r"):
        raise SyncError("The tutorial repository URL is empty or malformed; set a plain https:// or ssh URL.")
    if "://" not in url:
        return  # scp-like "git@host:org/repo.git" or a local path
    parts = urlsplit(url)
    if parts.password is not None or (parts.username is not None and parts.scheme in ("http", "https")):
        raise SyncError(
            "The tutorial repository URL contains credentials; remove them from the URL and "
            "set the token (HTTPS) or the deploy key (SSH) setting instead."
        )


class GitSource:
    """A branch of a remote repository, mirrored into the bare repository ``cache_dir``.

    ``token`` is sent as ``Authorization: Basic base64(x-access-token:TOKEN)`` (GitHub, GitLab,
    Gitea accept this) or, with ``auth_scheme="bearer"``, as ``Authorization: Bearer TOKEN``.
    ``ssh_key`` is the path of a private deploy key file.
    """

    def __init__(
        self,
        url: str,
        branch: str,
        cache_dir: Path,
        token: str | None = None,
        ssh_key: str | None = None,
        timeout: float = 120,
        auth_scheme: str = "basic",
    ) -> None:
        check_url(url)
        if not branch or branch.startswith("-") or any(c in branch for c in " \t\0\n\r~^:?*[\\"):
            raise SyncError(f"The branch name {branch!r} is not a valid Git branch name.")
        if auth_scheme not in ("basic", "bearer"):
            raise SyncError(f"auth_scheme must be 'basic' or 'bearer', not {auth_scheme!r}.")
        self.url = url
        self.branch = branch
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self._token = token or None
        self._ssh_key = ssh_key
        self._auth_scheme = auth_scheme
        self._ref = f"refs/tutorial-sync/{branch}"

    def __repr__(self) -> str:
        return f"GitSource(url={self.url!r}, branch={self.branch!r}, token={'***' if self._token else None})"

    # -- command building (pure) -------------------------------------------------------------

    def _credential(self) -> str:
        """The token as it travels in the header (base64 for Basic): scrubbed wherever it shows."""
        if self._auth_scheme == "bearer":
            return str(self._token)
        return base64.b64encode(f"x-access-token:{self._token}".encode()).decode()

    def command(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """The argv and environment to run ``git ARGS`` against the mirror; argv holds no secret."""
        env = {k: v for k, v in os.environ.items() if k in PASS_ENV}
        env.setdefault("PATH", os.defpath)
        env.update(
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="/bin/false",
            SSH_ASKPASS="/bin/false",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_ALLOW_PROTOCOL=ALLOWED_PROTOCOLS,
            LC_ALL="C",
        )
        config = [
            ("credential.helper", ""),
            ("core.hooksPath", os.devnull),
            ("transfer.fsckObjects", "true"),
            ("fetch.fsckObjects", "true"),
            *((f"fetch.fsck.{check}", "ignore") for check in PATH_FSCK_CHECKS),
        ]
        if self._token:
            config.append(
                ("http.extraHeader", f"Authorization: {self._auth_scheme.title()} {self._credential()}")
            )
        for i, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        env["GIT_CONFIG_COUNT"] = str(len(config))
        if self._ssh_key:
            known_hosts = shlex.quote(f"UserKnownHostsFile={self.cache_dir / 'known_hosts'}")
            env["GIT_SSH_COMMAND"] = (
                f"ssh -i {shlex.quote(self._ssh_key)} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new"
                f" -o {known_hosts} -o BatchMode=yes"
            )
        return ["git", f"--git-dir={self.cache_dir}", *args], env

    def scrub(self, text: str) -> str:
        """``text`` with every form of the token replaced by ``***``."""
        for secret in (self._token, self._token and self._credential()):
            if secret:
                text = text.replace(secret, "***")
        return text

    # -- running git ---------------------------------------------------------------------------

    def _spawn(self, args: tuple[str, ...], stdin: int, stderr: int) -> subprocess.Popen:
        argv, env = self.command(*args)
        try:
            return subprocess.Popen(
                argv, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
            )
        except OSError as e:
            raise SyncError(
                f"Cannot run git ({e.strerror}); install git on the tutorial-sync host."
            ) from None

    def _run(self, *args: str, what: str) -> bytes:
        proc = self._spawn(args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            raise SyncError(f"{what} timed out after {self.timeout:g} s.") from None
        if proc.returncode != 0:
            raise SyncError(self._explain(what, err.decode("utf-8", "replace")))
        return out

    def _explain(self, what: str, stderr: str) -> str:
        detail = self.scrub(stderr).strip()
        low = detail.lower()
        if "couldn't find remote ref" in low:
            return f"Branch {self.branch!r} does not exist in {self.url}; check the branch setting."
        if any(marker in low for marker in FSCK_FAILURES):
            return (
                f"{what} from {self.url} was refused: the repository holds malformed Git objects "
                "(git fsck). Nothing was published; rewrite the offending commit and push again."
            )
        if any(marker in low for marker in AUTH_FAILURES):
            return (
                f"{what} from {self.url} was refused: authentication failed. Check the token or deploy "
                "key setting and that it grants read access to the repository."
            )
        last = detail.splitlines()[-1] if detail else "no error output"
        return f"{what} from {self.url} failed: {last[:500]}"

    def _ensure_mirror(self) -> None:
        if (self.cache_dir / "HEAD").is_file():
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._run("init", "--quiet", "--bare", what="Creating the mirror repository")

    def fetch(self) -> str:
        """Fetch the branch and return the full sha of its tip commit."""
        self._ensure_mirror()
        refspec = f"+refs/heads/{self.branch}:{self._ref}"
        started = time.monotonic()
        what = "Fetching the tutorial repository"
        self._run(
            "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", self.url, refspec, what=what
        )
        out = self._run("rev-parse", "--verify", "--end-of-options", f"{self._ref}^{{commit}}", what=what)
        sha = out.decode().strip()
        log.info(
            "Fetched %s branch %s at %s in %.1fs", self.url, self.branch, sha[:12], time.monotonic() - started
        )
        return sha

    def tree(self, sha: str) -> list[TreeEntry]:
        """Every blob, symlink and submodule of commit ``sha``, recursively."""
        if not SHA_RE.match(sha):
            raise SyncError(f"{sha!r} is not a full commit sha.")
        out = self._run(
            "ls-tree", "-r", "-z", "--long", "--full-tree", sha, what="Listing the commit's files"
        )
        entries = []
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, oid, size = meta.decode("ascii").split()
            path = raw_path.decode("utf-8", "surrogateescape")
            entries.append(TreeEntry(mode, kind, oid, None if size == "-" else int(size), path))
        return entries

    def read_blobs(self, oids: Iterable[str]) -> Iterator[Blob]:
        """Stream blobs in order through one ``git cat-file --batch``.

        Each :class:`Blob` must be consumed (or is drained) before the next one is produced, so
        memory use is one chunk however large the blob.
        """
        proc = self._spawn(("cat-file", "--batch"), stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        watchdog = _Watchdog(proc, self.timeout)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            for oid in oids:
                if not SHA_RE.match(oid):
                    raise SyncError(f"{oid!r} is not a full object id.")
                proc.stdin.write(f"{oid}\n".encode())
                proc.stdin.flush()
                watchdog.touch()
                header = proc.stdout.readline().decode("ascii", "replace").split()
                if len(header) != 3 or header[1] != "blob":
                    raise SyncError(f"Object {oid[:12]} is missing or not a file ({' '.join(header[1:])}).")
                blob = Blob(oid, int(header[2]), proc.stdout, watchdog)
                yield blob
                blob.drain()
                proc.stdout.read(1)  # the newline after each object
        except (SyncError, OSError, ValueError) as e:
            if watchdog.fired:
                raise SyncError(
                    f"Reading files from the mirror timed out after {self.timeout:g} s."
                ) from None
            if isinstance(e, SyncError):
                raise
            raise SyncError(f"git cat-file failed: {e}") from None
        finally:
            watchdog.stop()
            _kill_group(proc)
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
