"""The tutorial-sync webhook endpoint against the real service process, over HTTP.

The endpoint needs no sign-in (GitHub calls it), so whatever a stranger sends must end in a
clean 4xx: a header with non-ASCII characters, a signed body that is not UTF-8, JSON nested past
the parser's depth, or a body of 100 MB (refused before it is read, not buffered).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from gitserver import WorkClone, make_bare
from harness import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
SECRET = "webhook-s3cret-for-tests"
CAP_KB = 64


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Service:
    def __init__(self, proc: subprocess.Popen, base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log

    def post(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(self.base + "webhook", data=body, headers=headers, timeout=30)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("webhook")
    bare = make_bare(tmp / "tutorials.git")
    clone = WorkClone(bare, tmp / "author")
    clone.write("intro.py", "print('v1')\n")
    clone.commit_and_push("v1")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "GPUHUB_"))}
    env |= {"JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}", "GPUHUB_WEBHOOK_SECRET": SECRET}
    argv = [sys.executable, "-m", "hub_services.tutorial_sync", "--repo", str(bare), "--store",
            str(tmp / "store"), "--poll-interval", "3600", "--max-webhook-kb", str(CAP_KB)]  # fmt: skip
    log = tmp / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    svc = Service(proc, f"http://127.0.0.1:{port}/", log)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            requests.get(svc.base + "metrics", timeout=2)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    yield svc
    proc.terminate()
    proc.wait(10)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and " 500 " not in text, text


def push(ref: str = "refs/heads/main") -> bytes:
    return json.dumps({"ref": ref, "after": "0" * 40}).encode()


def test_a_signed_push_still_starts_a_sync(service: Service):
    body = push()
    r = service.post(body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body)})
    assert (r.status_code, r.json()) == (202, {"sync": "started"})
    other = push("refs/heads/other")
    r = service.post(other, {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(other)})
    assert r.status_code == 200 and r.json()["sync"] == "ignored"


@pytest.mark.parametrize(
    "header",
    ["sha256=" + "é" * 64, "sha256=\xff\xfe", "é", "sha256=" + "0" * 63 + "\xe9"],
    ids=["accented-hex", "latin1-bytes", "no-prefix", "one-bad-char"],
)
def test_non_ascii_signature_is_401_not_500(service: Service, header: str):
    r = service.post(push(), {"X-GitHub-Event": "push", "X-Hub-Signature-256": header})
    assert r.status_code == 401, r.text
    assert r.json() == {"error": "bad signature"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"ref": "refs/heads/\xff\xfe"}',
        b"\xff\xfe{\x00}\x00",
        b"[" * 20_000 + b"]" * 20_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b"[1, 2]",
        b'{"ref": ["refs/heads/main"]}',
        b"not json",
    ],
    ids=["not-utf8", "utf16-bom", "nested-lists", "nested-objects", "list", "ref-not-string", "garbage"],
)
def test_signed_but_unusable_body_is_4xx(service: Service, body: bytes):
    r = service.post(body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body)})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:  # a well-formed object whose ref is not a string: not our branch
        assert r.json()["sync"] == "ignored"
    else:
        assert "JSON" in r.json()["error"]


def _raw_request(port: int, head: bytes, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` then the chunks until the server answers or hangs up; (its answer, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return sock.recv(4096), sent
        except ConnectionResetError:
            return b"", sent


def test_100_mb_body_is_refused_before_it_is_read(service: Service):
    port = int(service.base.rsplit(":", 1)[1].strip("/"))
    before = service.rss_kib()
    size = 100 * 1024 * 1024
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: {sign(b'')}\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    answer, _ = _raw_request(port, head, iter([b"{" * 65536]))
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert f"limited to {CAP_KB * 1024} bytes".encode() in answer

    # no Content-Length: chunked, 100 MB offered; the server hangs up once past the cap
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"%x\r\n%s\r\n" % (1 << 20, b"[" * (1 << 20))
    answer, sent = _raw_request(port, head, iter([piece] * 100))
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert sent < 100 << 20  # cut off long before the end
    assert service.rss_kib() - before < 20 * 1024  # nothing near 100 MB was held
    assert service.proc.poll() is None


def test_declared_body_over_the_cap_is_413_and_the_next_request_works(service: Service):
    body = b" " * (CAP_KB * 1024 + 1)
    r = service.post(body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body)})
    assert r.status_code == 413
    small = push()
    r = service.post(small, {"X-GitHub-Event": "ping", "X-Hub-Signature-256": sign(small)})
    assert r.status_code == 200


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=300) | st.recursive(st.none() | st.text(max_size=5), st.lists, max_leaves=20).map(
        lambda v: json.dumps(v).encode()
    ),
    header=st.text(st.characters(max_codepoint=255, exclude_categories=["Cc"]), max_size=80).map("sha256=".__add__),
    signed=st.booleans(),
    event=st.sampled_from(["push", "ping", "issues", ""]),
)
def test_any_request_gets_a_clean_answer(service: Service, body: bytes, header: str, signed: bool, event: str):
    headers = {"X-GitHub-Event": event, "X-Hub-Signature-256": sign(body) if signed else header}
    r = service.post(body, headers)
    assert r.status_code in ((200, 202, 400) if signed else (401,)), (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
