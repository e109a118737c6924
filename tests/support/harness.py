"""A real JupyterHub (with its real proxy) on a real Docker engine, for tests and benchmarks.

:class:`HubProcess` starts ``jupyterhub -f jupyterhub_config.py`` as a subprocess on free
ports with its own data directory, hub id and volume names, and talks to it through the
REST API with a service token that the test's extra config grants.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("GPUHUB_TEST_IMAGE", "gpuhub/singleuser:latest")
TEST_LABEL = "org.gpuhub.test"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


#: ports this process handed out: the kernel may offer a just-released port again, and two
#: services of one hub given the same port fail with "Address already in use"
_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A free TCP port, never one this process handed out before, and never an ephemeral one.

    Ports come from below the kernel's ephemeral range: a server that binds port 0 itself (the
    test git server, Docker's published ports) gets an ephemeral port, so it can never be given
    a port the harness already promised to a hub service that has not bound it yet (two CI runs
    failed that way: "Address already in use", and git reading another server's answer).
    """
    low = _ephemeral_low()
    # each pytest-xdist worker (gw0, gw1…) draws from its own slice of the range: the set above
    # is per process, so two workers could otherwise promise the same port to two hubs
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    lanes = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    width = 12000 // lanes
    first = max(1024, low - 12000) + width * (worker % lanes)
    rng = random.Random()
    while True:
        port = rng.randrange(first, first + width)
        if port in _PORTS_GIVEN or not _bindable(port):
            continue
        _PORTS_GIVEN.add(port)
        return port


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def fake_gpus(n: int, tag: str, **extra: Any) -> list[dict[str, Any]]:
    """n whole GPUs with made-up but well-formed UUIDs (no GPU exists on these machines)."""
    return [{"uuid": f"GPU-{tag}-{i:04d}-0000-0000-000000000000", **extra} for i in range(n)]


def fake_mig_gpu(tag: str, profiles: list[str]) -> dict[str, Any]:
    return {
        "uuid": f"GPU-{tag}-mig0-0000-0000-000000000000",
        "mig": [{"uuid": f"MIG-{tag}-{i:04d}-0000-0000-000000000000", "profile": p} for i, p in enumerate(profiles)],
    }


@dataclass
class SpawnOutcome:
    """How one spawn ended for its user: the POST's status, the progress messages, the last event.

    ``lost`` says why no end was seen (the hub died under the request).
    """

    user: str
    status: int | None = None
    messages: list[str] = field(default_factory=list)
    end: dict[str, Any] | None = None
    refusal: str = ""  # the POST's error message, when it failed at once
    lost: str = ""

    @property
    def ready(self) -> bool:
        return bool(self.end and self.end.get("ready"))

    @property
    def failure(self) -> str | None:
        return self.end.get("message", "") if self.end and self.end.get("failed") else None


def processes(*files: str) -> Iterator[tuple[int, list[bytes]]]:
    """Each live process's pid with the bytes of its ``/proc/<pid>/<file>`` for ``files``
    (those of another user, or one that ends while read, are passed over)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            contents = [(entry / name).read_bytes() for name in files]
        except OSError:
            continue
        yield int(entry.name), contents


#: Test hubs notice a server (and a managed service) that has come up within 0.25 s.
#: JupyterHub waits for a started server by polling it with a full-jitter exponential backoff
#: capped at 5 s between tries, so a server that took a few seconds to start was noticed about
#: 1 s late on average (up to 5 s): minutes over the suite's few hundred spawns.  Only the
#: interval changes: the same check, the same timeouts, the same failures.
FAST_READINESS = textwrap.dedent(
    """
    import functools as _functools, jupyterhub.utils as _jh_utils
    if not isinstance(_jh_utils.exponential_backoff, _functools.partial):
        # wait_for_server / wait_for_http_server look the name up in jupyterhub.utils
        _jh_utils.exponential_backoff = _functools.partial(_jh_utils.exponential_backoff, max_wait=0.25)
    """
)


class HubProcess:
    """One JupyterHub subprocess and the Docker objects it made."""

    def __init__(self, workdir: Path, spawner_config: dict[str, Any] | None = None, extra: str = "",
                 spawner_class: str = "gpu-docker"):
        self.workdir = workdir
        self.hub_id = "t" + secrets.token_hex(4)
        self.token = secrets.token_hex(16)
        self.password = secrets.token_urlsafe(16)  # test hubs' shared sign-in password
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "hub.log"
        self.proc: subprocess.Popen | None = None
        self._terminated: subprocess.Popen | None = None  # the process already sent SIGTERM
        self.env = self._env(spawner_config or {}, extra, spawner_class)

    def _env(self, spawner_config: dict[str, Any], extra: str, spawner_class: str) -> dict[str, str]:
        settings = {
            "gpu_hub_id": self.hub_id,
            "scratch_volume_name": f"{self.hub_id}-{{username}}-scratch",
            "tutorials_copy_volume_name": f"{self.hub_id}-{{username}}-my-tutorials",
            "tutorials_source": f"{self.hub_id}-tutorials",
            "prefix": self.hub_id,
            **spawner_config,
        }
        lines = [f"c.GPUDockerSpawner.{k} = {v!r}" for k, v in settings.items()]
        if spawner_class == "gpu-swarm":
            lines += [f"c.GPUSwarmSpawner.{k} = {v!r}" for k, v in settings.items()]
        elif spawner_class != "gpu-docker":
            lines.append(f"c.JupyterHub.spawner_class = {spawner_class!r}")
            lines += [f"c.DockerSpawner.{k} = {v!r}" for k, v in settings.items()
                      if k in ("prefix", "image")]
            lines.append("c.DockerSpawner.remove = True")
        config = textwrap.dedent(
            f"""
            c.JupyterHub.services.append({{"name": "gpuhub-test", "api_token": {self.token!r}}})
            c.JupyterHub.load_roles.append({{
                "name": "gpuhub-test",
                "scopes": ["admin:users", "admin:servers", "read:servers", "tokens", "read:hub",
                           "read:services", "read:roles:services", "admin:groups",
                           "access:services"],
                "services": ["gpuhub-test"],
            }})
            c.JupyterHub.log_level = "DEBUG"
            c.Spawner.start_timeout = 120
            c.JupyterHub.concurrent_spawn_limit = 200
            # test hubs: any username signs in with one password (data/shared-password), so
            # tests need no sign-up; the embedded default's own per-person sign-in is tested in
            # tests/e2e/test_signin_default.py, without this file
            import os as _os
            if not _os.environ.get("GITHUB_CLIENT_ID"):
                c.JupyterHub.authenticator_class = "shared-password"
                c.SharedPasswordAuthenticator.user_password = {self.password!r}
                c.Authenticator.allow_all = True
            """
        ) + FAST_READINESS + "\n".join(lines) + "\n" + extra
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "shared-password").write_text(self.password + "\n")
        extra_path = self.workdir / "extra_config.py"
        extra_path.write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUHUB_", "JUPYTERHUB_"))}
        env.update(
            {
                "GPUHUB_DATA_DIR": str(self.data_dir),
                "GPUHUB_BIND_URL": self.url,
                "GPUHUB_HUB_PORT": str(free_port()),
                "GPUHUB_PROXY_API_PORT": str(free_port()),
                "GPUHUB_ADMIN_SERVICE_PORT": str(free_port()),
                "GPUHUB_TUTORIAL_SYNC_PORT": str(free_port()),
                # the culler service is opt-in for tests (hub.start(env={"GPUHUB_CULLER": "on"}))
                "GPUHUB_CULLER": "off",
                "GPUHUB_CULLER_PORT": str(free_port()),
                "GPUHUB_EXTRA_CONFIG": str(extra_path),
                "GPUHUB_IMAGE": IMAGE,
                "GPUHUB_GPU_DISCOVERY": "static",
            }
        )
        return env

    # ---- process -----------------------------------------------------------------------

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the subprocess keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(REPO / "jupyterhub_config.py")],
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_up()

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(self.url + "/hub/api/", timeout=2)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"hub did not answer within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the hub process (its proxy child survives, as in a real crash).

        Its managed services are killed too: a restarted hub starts them again on the same
        ports, which a real operator would see as "address in use" until they exit.
        """
        if self.proc and self.proc.poll() is None:
            services = [pid for pid in _children(self.proc.pid) if b"hub_services" in _cmdline(pid)]
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            for pid in services:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def start_refused(self, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
        """Start the hub where it must refuse to start: its exit code and log (stopped and
        reported if it was still running after ``timeout``)."""
        self.start(wait=False, env=env)
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the hub started when it should have refused:\n{self.log_tail()}") from None
        return code, self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self._terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # the proxy is a child in our session: make sure nothing is left listening
        pid_file = self.data_dir / "jupyterhub-proxy.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ValueError, ProcessLookupError, PermissionError):
                pass

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ---- REST API ----------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + "/hub/api" + path, headers=headers, **kwargs)

    def create_users(self, names: list[str]) -> None:
        r = self.api("POST", "/users", json={"usernames": names})
        assert r.status_code in (201, 409), r.text

    def spawn(self, user: str, options: dict[str, Any] | None = None, timeout: float = 60) -> requests.Response:
        return self.api("POST", f"/users/{user}/server", json=options or {}, timeout=timeout)

    def user(self, name: str) -> dict[str, Any]:
        r = self.api("GET", f"/users/{name}")
        r.raise_for_status()
        return r.json()

    def wait_ready(self, name: str, timeout: float = 180, server_name: str = "") -> dict[str, Any]:
        start = time.monotonic()
        missing_since = None
        name_shown = f"{name}/{server_name}" if server_name else name
        while time.monotonic() < start + timeout:
            server = self.user(name).get("servers", {}).get(server_name)
            if server and server.get("ready"):
                return server
            now = time.monotonic()
            if server is not None:
                missing_since = None
            elif missing_since is None:
                missing_since = now
            elif now - missing_since > 5 and now - start > 10:
                # absent for a while, long after the spawn was accepted: it failed
                raise AssertionError(f"{name_shown}'s server is gone (spawn failed?):\n{self.log_tail()}")
            time.sleep(0.2)
        raise AssertionError(f"{name_shown}'s server not ready after {timeout}s:\n{self.log_tail()}")

    def race_two_named_gpu_servers(self, user: str, timeout: float) -> tuple[str, str, str]:
        """``user`` asks for two named GPU servers, "one" and "two", at the same moment: exactly one
        must be accepted and the other refused (403). Returns the accepted name, the refused one
        and the refusal's message.

        Accepted is its POST's 201/202, or, once the other was refused, its progress stream saying
        that it waits in line: a queued spawn's POST answers only after JupyterHub's
        slow_spawn_timeout (10 s), the stream at once."""
        pool = ThreadPoolExecutor(2)
        posts = {name: pool.submit(self.api, "POST", f"/users/{user}/servers/{name}", json={"profile": "gpu"},
                                   timeout=timeout) for name in ("one", "two")}
        pool.shutdown(wait=False)  # a POST still waiting is answered after this returns
        wait(posts.values(), timeout=timeout, return_when=FIRST_COMPLETED)
        answers: dict[str, requests.Response | None] = {n: f.result() for n, f in posts.items() if f.done()}
        pending = [n for n in posts if n not in answers]
        if len(pending) == 1 and all(r.status_code == 403 for r in answers.values() if r is not None):
            (other,) = pending
            in_line, _ = self.until_in_line(user, other, timeout, unless=posts[other].done)
            answers[other] = None if in_line else posts[other].result()
        answers.update({n: f.result() for n, f in posts.items() if n not in answers})
        refused = [name for name, r in answers.items() if r is not None and r.status_code == 403]
        accepted = [name for name, r in answers.items() if r is None or r.status_code in (201, 202)]
        shown = {n: "in line" if r is None else (r.status_code, r.text) for n, r in answers.items()}
        assert len(refused) == 1 and len(accepted) == 1, shown
        answer = answers[refused[0]]
        assert answer is not None
        return accepted[0], refused[0], answer.json()["message"]

    def events(self, path: str, timeout: float = 60) -> Iterator[dict[str, Any]]:
        """The events of a spawn's progress stream at ``path`` (the hub API's), as they come."""
        with self.api("GET", path, stream=True, timeout=timeout) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    yield json.loads(line[5:])

    def progress(self, name: str, timeout: float = 60) -> list[dict[str, Any]]:
        """All progress events of the pending spawn, until it finishes or fails."""
        events = []
        for event in self.events(f"/users/{name}/server/progress", timeout):
            events.append(event)
            if event.get("ready") or event.get("failed"):
                break
        return events

    def until_said(self, user: str, words: str, timeout: float = 60) -> list[str]:
        """``user``'s pending spawn's progress messages, read until one contains ``words``."""
        messages: list[str] = []
        for event in self.events(f"/users/{user}/server/progress", timeout):
            messages.append(event.get("message", ""))
            if words in messages[-1]:
                return messages
        raise AssertionError(f"{user} was never told {words!r}: {messages}")

    def wait_in_line(self, name: str, timeout: float = 60) -> list[str]:
        """Wait until ``name``'s pending spawn says in its progress stream that it waits in line;
        its messages so far. (The spawn's POST answers 202 only after JupyterHub's
        slow_spawn_timeout, 10 s: this is the event itself, as soon as it happens.)"""
        in_line, messages = self.until_in_line(name, "", timeout)
        if not in_line:
            raise AssertionError(f"{name} never waited in line: {messages}\n{self.log_tail()}")
        return messages

    def until_in_line(self, user: str, server_name: str = "", timeout: float = 60, unless=lambda: False) -> tuple[bool, list[str]]:
        """Follow the spawn of ``user``'s server ``server_name`` ("" the default one) once it is
        pending: whether its progress stream said it waits in line before it ended, its messages.
        ``unless()`` true while it is not pending yet: stop waiting (its POST was answered)."""
        deadline = time.monotonic() + timeout
        while (self.user(user).get("servers", {}).get(server_name) or {}).get("pending") != "spawn":
            if unless() or time.monotonic() > deadline:
                return False, []
            time.sleep(0.1)
        path = f"/users/{user}/servers/{server_name}/progress" if server_name else f"/users/{user}/server/progress"
        messages: list[str] = []
        for event in self.events(path, timeout):
            messages.append(event.get("message", ""))
            if "in line" in messages[-1]:
                return True, messages
            if event.get("ready") or event.get("failed"):
                break
        return False, messages

    def spawn_quietly(self, user: str, options: dict[str, Any] | None = None, timeout: float = 15) -> None:
        """Ask for a spawn whose answer does not matter (the hub may be killed under it)."""
        try:
            self.spawn(user, options, timeout=timeout)
        except requests.RequestException:
            pass

    def pending(self, name: str) -> bool:
        server = self.user(name)["servers"].get("")
        return bool(server and server.get("pending"))

    def watch_spawn(self, name: str, options: dict[str, Any] | None = None, timeout: float = 300) -> SpawnOutcome:
        """Spawn ``name``'s server and follow its progress stream to the end, as the spawn page does.

        A spawn refused at once answers the POST with an error; the stream then tells the failure
        again, in its own words: both are kept.
        """
        outcome = SpawnOutcome(name)
        try:
            r = self.spawn(name, options, timeout=timeout)
            outcome.status = r.status_code
            if r.status_code >= 400:
                outcome.refusal = r.json().get("message", r.text)
            events = [] if r.status_code == 201 else self.progress(name, timeout=timeout)
        except (requests.RequestException, ValueError) as e:
            outcome.lost = f"{type(e).__name__}: {e}"
            return outcome
        outcome.messages = [e.get("message", "") for e in events]
        outcome.end = events[-1] if events else {"ready": True} if r.status_code == 201 else None
        return outcome

    def home_page(self, name: str) -> str:
        """The hub's home page as ``name`` sees it, signed in as a browser would (the test hub's
        shared password)."""
        session = requests.Session()
        password = (self.data_dir / "shared-password").read_text().strip()
        session.get(self.url + "/hub/login", timeout=10)
        r = session.post(self.url + "/hub/login", allow_redirects=False, timeout=10,
                         data={"username": name, "password": password, "_xsrf": session.cookies.get("_xsrf")})
        assert r.status_code == 302, r.text
        r = session.get(self.url + "/hub/home", timeout=30)
        assert r.ok, r.text
        return r.text

    def new_token(self, name: str) -> str:
        """A fresh API token of user ``name`` (all of the user's own scopes)."""
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "test"})
        r.raise_for_status()
        return r.json()["token"]

    def stop_server(self, name: str, timeout: float = 60) -> None:
        r = self.api("DELETE", f"/users/{name}/server", timeout=timeout)
        assert r.status_code in (202, 204), r.text
        self.wait_stopped(name, timeout)

    def wait_stopped(self, name: str, timeout: float = 30) -> None:
        """Wait until the hub lists no server of ``name`` (stopped by whoever)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.user(name).get("servers"):
                return
            time.sleep(0.1)
        raise AssertionError(f"{name}'s server did not stop")

    # ---- Docker objects ----------------------------------------------------------------

    def containers(self, client: docker.DockerClient, all: bool = True) -> list:
        return client.containers.list(all=all, filters={"label": f"org.gpuhub.hub={self.hub_id}"})

    def all_containers(self, client: docker.DockerClient) -> list:
        """Ours plus plain DockerSpawner's (unlabelled, but named with the hub id as prefix)."""
        named = client.containers.list(all=True, filters={"name": f"{self.hub_id}-"})
        by_id = {c.id: c for c in [*self.containers(client), *named]}
        return list(by_id.values())

    @contextmanager
    def kept_for_tests(self, client: docker.DockerClient, log_lines: int = 120) -> Iterator[HubProcess]:
        """A fixture's hold on this hub: its log is printed if the setup fails, and the hub and
        its containers are cleaned up however the fixture ends."""
        try:
            yield self
        except BaseException:
            print(self.log_tail(log_lines))
            raise
        finally:
            self.cleanup(client)

    def cleanup(self, client: docker.DockerClient) -> None:
        """Stop the hub, remove its containers and volumes.

        The hub's shutdown (its services, its proxy, the interpreter's exit: a second or more
        on a busy machine) runs while its containers are removed; whatever it still made
        meanwhile (a create already sent to the engine) goes in a second pass once it exited.
        """
        if self.proc and self.proc.poll() is None:
            self._terminate()
        self._remove_objects(client)
        self.stop()
        self._remove_objects(client)

    def _terminate(self) -> None:
        """SIGTERM the hub, once (a second one would start a second shutdown)."""
        if self.proc is not None and self._terminated is not self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = self.proc

    def _remove_objects(self, client: docker.DockerClient) -> None:
        def remove(obj) -> None:
            try:
                obj.remove(force=True)
            except docker.errors.APIError:
                pass

        containers = self.all_containers(client)
        if containers:
            with ThreadPoolExecutor(min(8, len(containers))) as pool:
                list(pool.map(remove, containers))
        for v in client.volumes.list(filters={"name": self.hub_id}):
            remove(v)


# ---- looking inside a user's container ------------------------------------------------


def container_of(docker_client, hub, user):
    found = [c for c in hub.containers(docker_client) if c.labels.get("org.gpuhub.user") == user]
    assert len(found) == 1, f"{user}: expected one container, found {[c.name for c in found]}"
    found[0].reload()
    return found[0]


def server_env(container) -> dict[str, str]:
    """The environment of the server process (PID 1), which is what notebooks inherit.

    dockerd adds NVIDIA_VISIBLE_DEVICES from the DeviceRequest to the process itself, not to
    the container config, so `docker exec env` would not show it.
    """
    code, out = exec_as_user(container, "cat /proc/1/environ")
    assert code == 0, out
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def exec_as_user(container, cmd: str) -> tuple[int, str]:
    code, out = container.exec_run(["sh", "-c", cmd], user="1000")
    return code, out.decode(errors="replace")


def signed_in(hub: HubProcess, username: str) -> requests.Session:
    """A browser session of ``username`` (shared-password sign-in); its ``_xsrf`` cookie is set."""
    s = requests.Session()
    password = (hub.data_dir / "shared-password").read_text().strip()
    s.get(hub.url + "/hub/login", timeout=10)
    r = s.post(
        hub.url + "/hub/login",
        data={"username": username, "password": password, "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302, r.text
    return s


def render_form(hub: HubProcess, username: str) -> str:
    """The spawn page's options form as ``username`` sees it (shared-password sign-in)."""
    r = signed_in(hub, username).get(hub.url + "/hub/spawn", timeout=30)
    assert r.ok, r.text
    return r.text
