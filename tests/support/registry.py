"""Debian's image registry (``docker-registry``, distribution 2.8), started by a test.

Each :class:`Registry` runs ``/usr/bin/docker-registry serve`` with its own config, a free port
and its storage in a directory of the test's, without authentication (as the stack's registry
is reached only from the internal network and the nodes).  dockerd treats registries on
127.0.0.0/8 as insecure by default, so the host's engine pushes and pulls there over HTTP; a
registry other engines must reach (the swarm rig's nodes) listens on an address they can route
to, and those engines list it in ``insecure-registries``.

:class:`SlowLink` is a TCP relay in front of a registry whose every new connection waits before
it goes through, as a registry across a slow network does: a pull then takes long enough for a
test to watch it happen.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import docker
import requests
from harness import free_port
from needs import unavailable
from procs import stop_process

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


class Registry:
    """A running registry; ``address`` is ``host:port`` as image names spell it."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", ready_timeout: float = 30, listen: str = ""):
        """``listen``: the address to bind when not ``host`` (``0.0.0.0``: also where other
        engines reach it, :meth:`address_on`); ``host`` is where this machine's engine pushes."""
        if not os.access(REGISTRY, os.X_OK):
            unavailable("Debian's docker-registry is not installed (apt-get install docker-registry)")
        self.port = free_port()
        self.address = f"{host}:{self.port}"
        self.url = f"http://{self.address}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": f"{listen or host}:{self.port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        path = workdir / "config.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "registry.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen([REGISTRY, "serve", str(path)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"docker-registry did not answer:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            return requests.get(self.url + "/v2/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def address_on(self, ip: str) -> str:
        """``ip:port``: the registry as another machine names it (a registry listening on 0.0.0.0)."""
        return f"{ip}:{self.port}"

    def tags(self, repository: str) -> list[str]:
        """The tags the registry holds for ``repository`` (none when it does not know it)."""
        r = requests.get(f"{self.url}/v2/{repository}/tags/list", timeout=10)
        return (r.json().get("tags") or []) if r.ok else []

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def push_tiny_image(client: docker.DockerClient, name: str) -> None:
    """Make a one-file image (``/hello.txt``), push it as ``name`` and drop it from ``client``'s
    engine again, so that the next use of ``name`` there must pull it."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    repository, _, tag = name.rpartition(":")
    client.api.import_image_from_data(layer.getvalue(), repository=repository, tag=tag)
    try:
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise AssertionError(f"pushing {name} failed: {line['error']}")
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(name, force=True)


class SlowLink:
    """``address``: a relay to ``target`` (host:port) that holds each new connection ``delay``
    seconds before passing bytes either way."""

    def __init__(self, target: str, delay: float):
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.delay = delay
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        if self._stopped.wait(self.delay):
            conn.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
        _pipe(conn, upstream)

    def close(self) -> None:
        self._stopped.set()
        self._server.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
