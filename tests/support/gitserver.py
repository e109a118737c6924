"""Real Git repositories for tests: bare remotes, working clones, crafted trees, an HTTP server.

:func:`serve_http` serves a directory of bare repositories with git's own ``git http-backend``
behind a tiny CGI bridge on ``127.0.0.1``, optionally requiring a token (Bearer, or Basic with the
token as password) and answering 401 otherwise, so credentials are exercised end to end.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Tutorial Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Tutorial Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


def git(*args: str, cwd: Path, stdin: bytes | None = None) -> str:
    """Run git in ``cwd`` with a fixed identity and no user config; return stripped stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, input=stdin, capture_output=True, timeout=60)
    if proc.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode("utf-8", "surrogateescape").strip()


def make_bare(path: Path, branch: str = "main") -> Path:
    """An empty bare repository at ``path`` whose default branch is ``branch``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(path), cwd=path.parent)
    return path


class WorkClone:
    """A working clone of a bare repository, to commit files and push like an author does."""

    def __init__(self, bare: Path, path: Path, branch: str = "main") -> None:
        self.bare = bare
        self.path = path
        self.branch = branch
        git("init", "--quiet", f"--initial-branch={branch}", str(path), cwd=path.parent)
        git("remote", "add", "origin", str(bare), cwd=path)

    def write(self, rel: str, content: str | bytes, executable: bool = False) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        target.chmod(0o755 if executable else 0o644)

    def symlink(self, rel: str, points_to: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        os.symlink(points_to, target)

    def remove(self, rel: str) -> None:
        git("rm", "--quiet", "-r", "--", rel, cwd=self.path)

    def commit(self, message: str = "update") -> str:
        git("add", "--all", cwd=self.path)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.path)
        return git("rev-parse", "HEAD", cwd=self.path)

    def push(self, branch: str | None = None) -> None:
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch or self.branch}", cwd=self.path)

    def commit_and_push(self, message: str = "update") -> str:
        sha = self.commit(message)
        self.push()
        return sha


def crafted_commit(bare: Path, files: list[tuple[str, str, bytes]], branch: str = "main") -> str:
    """Commit a tree that porcelain would refuse, straight into ``bare`` with plumbing.

    ``files`` holds ``(path, mode, content)``; path components may be ``..``, ``.git``, and a
    name may be both a file and a directory. Mode ``120000`` makes a symlink whose content is
    its target, ``160000`` a submodule whose content is the commit id. ``mktree`` checks no names.
    """
    root: dict = {"trees": {}, "leaves": []}
    for path, mode, content in files:
        *parents, name = path.split("/")
        node = root
        for part in parents:
            node = node["trees"].setdefault(part, {"trees": {}, "leaves": []})
        if mode == "160000":
            node["leaves"].append((name, mode, "commit", content.decode()))
        else:
            oid = git("hash-object", "-w", "--stdin", cwd=bare, stdin=content)
            node["leaves"].append((name, mode, "blob", oid))
    sha = git("commit-tree", _mktree(bare, root), "-m", "crafted", cwd=bare)
    git("update-ref", f"refs/heads/{branch}", sha, cwd=bare)
    return sha


def _mktree(bare: Path, node: dict) -> str:
    lines = [f"{mode} {kind} {oid}\t{name}" for name, mode, kind, oid in node["leaves"]]
    lines += [f"040000 tree {_mktree(bare, sub)}\t{name}" for name, sub in node["trees"].items()]
    return git("mktree", "-z", cwd=bare, stdin="".join(line + "\0" for line in lines).encode())


class _Handler(BaseHTTPRequestHandler):
    """CGI bridge to ``git http-backend`` (smart HTTP, fetch and push)."""

    server: _GitHTTPServer

    def do_GET(self) -> None:
        self._backend()

    def do_POST(self) -> None:
        self._backend()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        self.server.requests.append(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}")

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value == token
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(value).decode().partition(":")[2] == token
            except ValueError:
                return False
        return False

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(parts)

    def _backend(self) -> None:
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        url = urlsplit(self.path)
        body = self._read_body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        proc = subprocess.run(["git", "http-backend"], env=env, input=body, capture_output=True, timeout=60)
        head, sep, payload = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = proc.stdout.partition(b"\n\n")
        headers = [line.split(":", 1) for line in head.decode("latin-1").splitlines() if ":" in line]
        status = next((v.strip() for k, v in headers if k.lower() == "status"), "200 OK")
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason or None)
        for key, value in headers:
            if key.lower() not in ("status", "content-length"):
                self.send_header(key, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _GitHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    token: str | None
    requests: list[str]


@contextmanager
def serve_http(root: Path, token: str | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the bare repositories under ``root``; yields the base URL (``http://HOST:PORT``;
    ``host``: a rig network's gateway for a hub inside the rig)."""
    server = _GitHTTPServer((host, 0), _Handler)
    server.root, server.token, server.requests = root, token, []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
