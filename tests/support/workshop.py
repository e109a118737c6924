"""The workshop day's cast and instruments: GPU workers joined with `gpuhub node setup`,
attendees who sign in through the FAKE GitHub and press Start, and the JSON report.

Used by tests/workshop/ and benchmarks/bench_stack.py.  The GPUs are FAKE (a JSON file read
by tests/support/fakes/fake_nvml_file.py inside each worker); everything else - the swarm,
`gpuhub node setup`, the hub, the proxy, the OAuth flow over HTTPS - is real.
"""

from __future__ import annotations

import io
import json
import os
import re
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pynvml
import requests
from swarm_rig import Node, SwarmRig

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent

# ---- the cast (tests/workshop/) -----------------------------------------------------------

#: worker name -> (rig index, MIG 1g.10gb units)
WORKERS = {"gpu-1": (1, 4), "gpu-2": (2, 3), "gpu-3": (3, 3)}
UNITS = sum(n for _i, n in WORKERS.values())
ORG, TEAM, STAFF = "acme", "acme:workshop", "acme:staff"
MEMBERS = [f"att{i:02d}" for i in range(29)]
ROSTERED = "rory"  # in no org: an admin put them on the roster
ATTENDEES = [*MEMBERS, ROSTERED]
OUTSIDER, BLOCKED, INSTRUCTOR = "mallory", "trent", "prof"
PROFILES = [
    {"slug": "mig", "display_name": "MIG 1g.10gb", "pool": "mig-1g.10gb", "default": True},
    {"slug": "cpu", "display_name": "CPU only", "pool": None},
]
QUOTA = {"max_gpu_units": 1, "mem_limit": "1G"}
QUEUE_WAIT = 600  # seconds a Start waits in line: the whole day, the test ends them
#: the tutorials repository's first commit: (file, content)
TUTORIAL = ("intro.py", "print('welcome, v1')\n")
#: the culler's timings in gpuhub.yaml: no timed passes (they would reclaim the day's idle servers
#: within a minute); the day asks for passes in its culler phase
CULLER = {"every": 0, "idle_gpu_timeout": 30, "warn_seconds": 5}

MIG_1G = {"name": "NVIDIA A100-SXM4-40GB MIG 1g.10gb", "memory_mb": 9728, "slices": 1}


def mig_gpus(tag: str, n: int) -> dict[str, Any]:
    """A FAKE NVML file: one A100 split into ``n`` MIG 1g.10gb instances (well-formed UUIDs)."""
    return {"gpus": [{
        "uuid": f"GPU-{tag}000000-0000-4000-8000-000000000001", "name": "NVIDIA A100-SXM4-40GB",
        "memory_mb": 40960,
        "mig": [{"uuid": f"MIG-{tag}00000{i}-0000-4000-8000-000000000001", **MIG_1G} for i in range(n)],
    }]}


def install_gpuhub(node: Node, rev: str = "HEAD") -> None:
    """Put the gpuhub package of commit ``rev`` (git archive: committed code, not a work in
    progress), the FAKE NVML and the NVML binding into ``node`` at /opt/gpuhub, in one archive
    (as an operator would pip install a release; no network inside the rig)."""
    made = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "gpuhub_spawner"],
                          capture_output=True, check=True)
    buf = io.BytesIO(made.stdout)
    with tarfile.open(fileobj=buf, mode="a") as tar:
        for f in (SUPPORT / "fakes").glob("*.py"):
            tar.add(str(f), f"fakes/{f.name}")
        tar.add(pynvml.__file__, "pynvml.py")
    node.sh("mkdir -p /opt/gpuhub")
    node.container.put_archive("/opt/gpuhub", buf.getvalue())


#: `gpuhub node ...` as gpuhub/cli.py runs it, less the other commands: the node image's Python
#: lacks what those import (pydantic's compiled core, for this Python) and has no network to pip
NODE_CLI = ("import argparse, sys; from gpuhub_spawner.node.nodecli import add_node_commands; "
            "p = argparse.ArgumentParser(prog='gpuhub'); add_node_commands(p.add_subparsers(dest='command')); "
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def gpuhub_on(node: Node, args: str) -> tuple[int, str]:
    """Run `gpuhub node ARGS...` on ``node`` with its FAKE NVML file (/opt/gpuhub/gpus.json)."""
    env = ("PYTHONPATH=/opt/gpuhub GPUHUB_NVML_MODULE=fakes.fake_nvml_file "
           "GPUHUB_FAKE_NVML_FILE=/opt/gpuhub/gpus.json")
    return node.sh(f"cd /opt/gpuhub && env {env} python3 -c \"{NODE_CLI}\" {args} 2>&1", check=False)


def join_gpu_worker(rig: SwarmRig, name: str, index: int, gpus: dict[str, Any],
                    image: str | None = None) -> tuple[Node, str]:
    """A bare node that becomes a GPU worker as the README tells operators: `gpuhub node setup`
    with the worker join token in a root-only file; ``image`` is put there first (pulled before
    it joins, so the hub's first server there does not wait for it).  Returns the node and the
    command's output."""
    node = rig.start_node(name, index)
    if image:
        rig.load_image(image, [name])
    install_gpuhub(node)
    node.put_file("/opt/gpuhub/gpus.json", json.dumps(gpus))
    node.put_file("/root/join-token", rig.worker_token() + "\n", mode=0o600)
    code, out = gpuhub_on(node, f"node setup --join-token-file /root/join-token --manager {rig.manager.ip}:2377 "
                                f"--advertise-addr {node.ip}")
    if code != 0:
        raise RuntimeError(f"gpuhub node setup on {name} exited {code}:\n{out[-2000:]}")
    return node, out


def build_workshop_rig(rig: SwarmRig) -> dict[str, str]:
    """Make ``rig`` the workshop's: a manager (also serving mutual TLS, for a hub off the
    manager such as the benchmark's plain SwarmSpawner) and :data:`WORKERS`, each a bare node
    made a GPU worker by `gpuhub node setup`; the single-user image on every worker (as `gpuhub
    node prepull` leaves it).  Returns each worker's last line of setup output.  The caller
    tears the rig down (``rig.teardown()``), also when this fails."""
    from concurrent.futures import ThreadPoolExecutor

    from harness import IMAGE

    rig.create_network()
    manager = rig.start_node("manager", 0)
    rig.serve_mutual_tls(manager)
    rig.init_swarm(manager)
    with ThreadPoolExecutor(len(WORKERS)) as pool:
        outputs = dict(zip(WORKERS, pool.map(
            lambda item: join_gpu_worker(rig, item[0], item[1][0], mig_gpus(f"{item[1][0]}a", item[1][1]))[1],
            WORKERS.items())))
    rig.wait_nodes_ready(["manager", *WORKERS])
    rig.load_image(IMAGE, list(WORKERS))
    return {name: (out.strip().splitlines() or [""])[-1] for name, out in outputs.items()}


#: the node agent's image: the tutorial mirror runs on it, the culler asks it about kernels
AGENT_IMAGE = "gpuhub/node-agent:latest"


def label_gpu_nodes(rig: SwarmRig, names: list[str]) -> None:
    """Label ``names`` ``gpuhub.gpu=true`` on the manager and load the node agent's image there,
    as the runbook has an operator do before `gpuhub deploy` (the stack's tutorial mirror runs
    on those nodes; the culler and Prometheus find the node agents there)."""
    rig.load_image(AGENT_IMAGE, names)
    rig.update_node(names, labels={"gpuhub.gpu": "true"})


def start_node_agents(rig: SwarmRig, names: list[str], token: str, hub_id: str) -> list[str]:
    """The node agent on each of ``names`` as `gpuhub node agent install` starts it (its
    ``docker run``, less the NVIDIA runtime: the rig's nodes have no GPU); its token in a
    root-only file on the node.  Returns each agent's activity URL."""
    from gpuhub_spawner.node.agent_install import AgentContainer

    return rig.run_node_agent(names, AgentContainer(image=AGENT_IMAGE, runtime="", hub_id=hub_id), token)


# ---- attendees -------------------------------------------------------------------------


@dataclass
class Press:
    """One press of Start: the first answer (status, seconds) and what followed."""

    user: str
    status: int = 0
    first_answer_s: float = 0.0
    message: str = ""
    error: str = ""
    #: refused after the first answer (202): the stack answers a Start after 0.3 s
    #: (deploy/inhub.py), so a refusal decided later comes as the spawn's failure event
    refused_late: bool = False

    @property
    def refused(self) -> bool:
        return self.status == 503 or self.refused_late


class Attendee:
    """One person's browser, as far as the hub can tell: cookies for the hub and for GitHub."""

    def __init__(self, login: str, hub_url: str, verify: str | bool):
        self.login = login
        self.hub_url = hub_url.rstrip("/")
        self.session = requests.Session()
        self.session.verify = verify
        # REQUESTS_CA_BUNDLE in the environment would win over ``verify``: only the test CA counts
        self.session.trust_env = False

    def sign_in(self, github, timeout: float = 60) -> requests.Response:
        """The OAuth web flow: /hub/oauth_login -> GitHub's authorize -> the hub's callback.
        Returns the last answer (the hub's page when signed in, its refusal otherwise)."""
        cookie = github.session_cookie(self.login)
        host = github.url.split("://", 1)[1].split(":")[0]
        for name, value in cookie.items():
            self.session.cookies.set(name, value, domain=host)
        r = self.session.get(self.hub_url + "/hub/oauth_login", timeout=timeout, allow_redirects=False)
        for _ in range(10):
            if r.status_code not in (301, 302, 303, 307) or "/hub/spawn" in r.headers.get("Location", ""):
                break
            r = self.session.get(urljoin(r.url, r.headers["Location"]), timeout=timeout, allow_redirects=False)
        return r

    @property
    def signed_in(self) -> bool:
        return any(c.name.startswith("jupyterhub-session-id") or c.name == "jupyterhub-hub-login"
                   for c in self.session.cookies)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The hub's REST API with this browser's cookie (and its XSRF token, as the page sends)."""
        headers = {"X-XSRFToken": self.session.cookies.get("_xsrf", path="/hub/") or self.session.cookies.get("_xsrf") or ""}
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.hub_url + "/hub/api" + path, headers=headers, **kwargs)

    def press_start(self, options: dict[str, Any]) -> Press:
        press = Press(self.login)
        t0 = time.perf_counter()
        try:
            r = self.api("POST", f"/users/{self.login}/server", json=options)
            press.first_answer_s = time.perf_counter() - t0
            press.status = r.status_code
            if r.status_code >= 400:
                press.message = (r.json() if r.headers.get("Content-Type", "").startswith("application/json")
                                 else {}).get("message", r.text[:300])
        except requests.RequestException as e:
            press.first_answer_s = time.perf_counter() - t0
            press.error = f"{type(e).__name__}: {e}"
        return press

    def press_start_told(self, options: dict[str, Any], within: float = 60) -> Press:
        """Start, and when the first answer is a 202, what the progress stream then says first:
        a failure (the refusal's message), or that the spawn goes on (ready, a place in line)."""
        press = self.press_start(options)
        if press.status != 202:
            return press
        events = self.progress(time.monotonic() + within, stop=lambda e: bool(POSITION.search(e.get("message", ""))))
        failed = next((e for e in events if e.get("failed")), None)
        if failed is not None:
            press.refused_late, press.message = True, failed.get("message", "")
        return press

    def progress(self, until: float, stop=lambda event: False) -> list[dict[str, Any]]:
        """The spawn's progress events until it is ready or failed, ``stop(event)`` says so, or
        ``until`` (a time.monotonic() deadline) passes."""
        events: list[dict[str, Any]] = []
        try:
            with self.api("GET", f"/users/{self.login}/server/progress", stream=True,
                          timeout=max(1.0, until - time.monotonic())) as r:
                for line in r.iter_lines(decode_unicode=True):
                    if line and line.startswith("data:"):
                        event = json.loads(line[5:])
                        events.append(event)
                        if event.get("ready") or event.get("failed") or stop(event) or time.monotonic() > until:
                            break
        except requests.RequestException:
            pass
        return events


POSITION = re.compile(r"You are #(\d+) of (\d+) in line")


def latest_position(attendee: Attendee, quiet: float = 2.0) -> tuple[int, int] | None:
    """``attendee``'s place in line now: the last "#k of n" of their spawn's progress (the
    stream replays what was said, then goes quiet while the line does not move); None once a
    later message says the spawn moved on (given a unit and being created, ready, or failed)."""
    last = None
    try:
        with attendee.api("GET", f"/users/{attendee.login}/server/progress", stream=True,
                          timeout=(10, quiet)) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    m = POSITION.search(event.get("message", ""))
                    last = (int(m[1]), int(m[2])) if m else None
                    if event.get("ready") or event.get("failed"):
                        return None
    except requests.RequestException:
        pass
    return last


def press_all(attendees: list[Attendee], options: dict[str, Any], also=None) -> tuple[list[Press], Any]:
    """Everyone presses Start at the same moment (a barrier, one thread each); ``also`` (a
    callable, e.g. a browser's press) goes at that moment too.  Returns the presses and what
    ``also`` returned."""
    parties = len(attendees) + (1 if also else 0)
    barrier = threading.Barrier(parties)
    results: list[Any] = [None] * parties

    def go(i: int) -> None:
        barrier.wait()
        results[i] = attendees[i].press_start(options) if i < len(attendees) else also()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(parties)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results[:len(attendees)] if r is not None], (results[-1] if also else None)


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and max of ``values`` in seconds (None where there are none)."""
    if not values:
        return {"n": 0, "p50_s": None, "p95_s": None, "max_s": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]
    return {"n": len(ordered), "p50_s": round(statistics.median(ordered), 3), "p95_s": round(p95, 3),
            "max_s": round(ordered[-1], 3)}


def wait_estimates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What each spawn that waited in line was told (its first likely-wait range) against how
    long it waited, from the rows the hub keeps of finished waits (table ``gpuhub_line_wait``,
    written by gpuhub_spawner/hub/waitestimate.py): user, pool, place, told_low, told_high,
    holds, waited_s, outcome.

    A wait inside the range has error 0; outside, the distance to the nearer end; a range with no
    upper end ("more than ...") misses only when the wait was shorter.  Cancelled waits are listed
    but not scored: how long they would have waited is not known."""
    entries = []
    for row in rows:
        low, high, waited = row["told_low"], row["told_high"], round(row["waited_s"])
        error = None
        if low is not None and row["outcome"] != "cancelled":
            error = max(0, round(low) - waited) + (max(0, waited - round(high)) if high is not None else 0)
        entries.append({"user": row["user"], "pool": row["pool"], "place": row["place"],
                        "told_low_s": None if low is None else round(low),
                        "told_high_s": None if high is None else round(high),
                        "holds": row["holds"], "waited_s": waited, "outcome": row["outcome"], "error_s": error})
    scored = [e for e in entries if e["outcome"] != "cancelled"]
    ranged = [e for e in scored if e["told_low_s"] is not None]
    return {
        "waits": len(entries),
        "cancelled": len(entries) - len(scored),
        "told_no_estimate": len(scored) - len(ranged),
        "told_a_range": len(ranged),
        "inside_the_range": sum(1 for e in ranged if e["error_s"] == 0),
        "error_outside_range": quantiles([float(e["error_s"]) for e in ranged if e["error_s"]]),
        "entries": entries,
    }


# ---- the report --------------------------------------------------------------------------


@dataclass
class Report:
    """The workshop day's JSON report: one entry per phase, written after each, so a run that
    stops half-way still leaves what it saw."""

    name: str
    folder: Path = field(default_factory=lambda: Path(os.environ.get("GPUHUB_REPORT_DIR") or tempfile.mkdtemp(
        prefix="gpuhub-report-")))
    data: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data = {"report": self.name, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "phases": {}, "left_out": {}}

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}.json"

    def phase(self, name: str, **facts: Any) -> None:
        self.data["phases"][name] = {**self.data["phases"].get(name, {}), **facts}
        self.write()

    def left_out(self, name: str, why: str) -> None:
        self.data["left_out"][name] = why
        self.write()

    def write(self) -> Path:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.path.write_text(json.dumps(self.data, indent=2, sort_keys=False) + "\n")
        return self.path


# ---- a real browser for the sample --------------------------------------------------------


class Browser:
    """One attendee's Chromium (headless, its own profile).  The test CA is not in Chromium's
    store (no NSS tools here), so Chromium is told to accept exactly the leaf keys the test
    made (``--ignore-certificate-errors-spki-list``), nothing else.

    It speaks HTTP/1.1 (``--disable-http2``): this browser runs on the Docker host itself, and
    Chromium on Linux closes every HTTP/2 connection, with the requests on it ("Your connection
    was interrupted", ERR_NETWORK_CHANGED), whenever a network interface of the host changes,
    which Docker does for each network the other test lane creates.  Measured here: 8-second
    HTTPS page loads through Caddy while a loop created a network and a container on it, 6 of 6
    lost with HTTP/2 (to the host's address and to 127.0.0.1 alike), 0 of 6 with HTTP/1.1.  An
    attendee's browser is on another machine and never sees the hub host's interfaces."""

    def __init__(self, profile: Path, spki: list[str], hosts: dict[str, str] | None = None):
        import shutil

        from selenium import webdriver

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-http2", "--window-size=1280,900", f"--user-data-dir={profile}",
                     "--ignore-certificate-errors-spki-list=" + ",".join(spki)):
            options.add_argument(flag)
        if hosts:  # the public name's DNS record, for this browser only
            options.add_argument("--host-resolver-rules=" + ", ".join(f"MAP {n} {ip}" for n, ip in hosts.items()))
        service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "chromedriver")
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(120)

    def sign_in(self, hub_url: str, github, login: str) -> str:
        """Signed in to GitHub as ``login`` (GitHub's session cookie), then "Sign in with GitHub"
        on the hub; returns the page's text where it lands."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        d.get(github.url + "/")
        for name, value in github.session_cookie(login).items():
            d.add_cookie({"name": name, "value": value, "path": "/"})
        shown = ""
        for attempt in (1, 2):  # a person reloads a page that did not come: once, and it is reported
            d.get(hub_url.rstrip("/") + "/hub/login")
            try:
                WebDriverWait(d, 60).until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "Sign in with GitHub"))).click()
                break
            except TimeoutException:  # say what the browser shows instead (an error page, another page)
                shown = f"{d.current_url}: {d.find_element(By.TAG_NAME, 'body').text[:800]!r}"
                if attempt == 2:
                    raise AssertionError(f"no 'Sign in with GitHub' within 60 s, twice; last on {shown}") from None
                warnings.warn(f"{login}'s browser: no 'Sign in with GitHub' within 60 s on {shown}; reloading once",
                              stacklevel=1)
        WebDriverWait(d, 60).until(lambda d: "/hub/" in d.current_url and "/login" not in d.current_url)
        return d.find_element(By.TAG_NAME, "body").text

    def open_page(self, url: str, locator: tuple[str, str], what: str, timeout: float = 60) -> Any:
        """Load ``url`` and wait for ``locator``; a page that does not come in ``timeout`` s is
        reloaded once (as a person would), with a warning naming what was shown instead."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        for attempt in (1, 2):
            d.get(url)
            try:
                return WebDriverWait(d, timeout).until(ec.presence_of_element_located(locator))
            except TimeoutException:
                shown = f"{d.current_url}: {d.find_element(By.TAG_NAME, 'body').text[:800]!r}"
                if attempt == 2:
                    raise AssertionError(f"no {what} within {timeout:.0f} s, twice; last on {shown}") from None
                warnings.warn(f"no {what} within {timeout:.0f} s on {shown}; reloading once", stacklevel=2)
        raise AssertionError("unreachable")

    def cookies_for(self, attendee: Attendee) -> None:
        """Hand this browser's hub cookies to ``attendee``'s REST session (the same person)."""
        for c in self.driver.get_cookies():
            attendee.session.cookies.set(c["name"], c["value"], path=c.get("path", "/"))

    def press_start(self, profile: str) -> tuple[float, str, str]:
        """Pick ``profile`` on the spawn form and press Start: seconds until the next page is
        shown, that page's URL, and the refusal the form then shows ("" on the progress page)."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        d.find_element(By.CSS_SELECTOR, f"input[name=profile][value='{profile}']").click()
        before = d.current_url
        t0, clicked = time.perf_counter(), time.time()
        form = d.find_element(By.CSS_SELECTOR, "form input[name=profile]").find_element(By.XPATH, "ancestor::form")
        form.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
        # the next page: the progress page (or the server itself), or the form again with the refusal
        try:
            WebDriverWait(d, 120, poll_frequency=0.02).until(lambda d: d.execute_script(
                "return document.readyState") == "complete" and (
                "/hub/spawn-pending/" in d.current_url or "/user/" in d.current_url
                or (d.current_url != before and d.find_elements(By.CSS_SELECTOR, ".spawn-error-msg"))))
        except TimeoutException:
            body = d.find_element(By.TAG_NAME, "body").text[:600]
            return time.perf_counter() - t0, d.current_url, f"no next page within 120 s: {body}"
        took = time.perf_counter() - t0
        self.last_timing = self._navigation_timing(clicked)
        errors = d.find_elements(By.CSS_SELECTOR, ".spawn-error-msg")
        return took, d.current_url, errors[0].text if errors else ""

    #: where the seconds of the last :meth:`press_start` went (the browser's Navigation Timing)
    last_timing: dict[str, float] | None = None

    def _navigation_timing(self, clicked: float) -> dict[str, float] | None:
        """Seconds from the click (``clicked``: time.time()) to the hub's answer to the Start
        (the redirect's end, or the answering page's first byte), the page's DOM ready, and
        every asset loaded, from the browser's own clock (Navigation Timing Level 2)."""
        got = self.driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return n ? {origin: performance.timeOrigin, redirectEnd: n.redirectEnd, fetchStart: n.fetchStart,"
            " responseStart: n.responseStart, dom: n.domContentLoadedEventEnd, load: n.loadEventEnd} : null;")
        if not got:
            return None
        def at(ms: float) -> float:
            return round((got["origin"] + ms) / 1000 - clicked, 3)

        return {"answer_s": at(got["redirectEnd"] or got["responseStart"]), "page_first_byte_s": at(got["responseStart"]),
                "dom_ready_s": at(got["dom"]), "loaded_s": at(got["load"]) if got["load"] else None}

    def quit(self) -> None:
        self.driver.quit()
