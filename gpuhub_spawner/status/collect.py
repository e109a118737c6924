"""``gpuhub status``: read the hub, its services and the swarm (the I/O half; see report.py).

Everything comes through the Hub API with one token (``--token-file``), the services' own
endpoints behind the hub's proxy, and the Docker API of the engine the hub uses (its socket,
or ``DOCKER_HOST`` with mutual TLS).  What the token needs (a hub admin's token has it all;
an operator's service token with only these scopes is enough):

    list:users, read:users, read:servers   who is starting, and each start's progress (place in line)
    list:services, read:services           the hub-managed services and their addresses
    read:metrics                           the line lengths (/hub/metrics) and pools (the exporter)

Every request has a timeout; a progress stream is read for at most ``progress_wait`` seconds
(the hub replays a start's past events at once, then waits for new ones).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import quote

import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuhub_spawner.core.cluster import ClusterView
from gpuhub_spawner.core.labels import LABEL_HUB
from gpuhub_spawner.status import report as rpt

log = logging.getLogger(__name__)
STACK_LABEL = "com.docker.stack.namespace"


class HubReader:
    """The hub's REST API and its proxy's routes with one token, a timeout on every call."""

    def __init__(self, hub_url: str, token: str, timeout: float = 10.0, progress_wait: float = 1.5):
        self.url = hub_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        self.timeout = timeout
        self.progress_wait = progress_wait

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=self.timeout, allow_redirects=False, **kwargs)

    def api(self, path: str) -> Any:
        r = self.get("/hub/api" + path, headers={"Accept": "application/json"})
        if r.status_code in (401, 403, 404) and path == "/user":
            raise PermissionError(f"the hub refused the token ({r.status_code}): it is unknown, expired or "
                                  "revoked; make a new one (hub admin: /hub/token, or a service's api_token)")
        if r.status_code in (401, 403):
            raise PermissionError(f"the hub refused the token for {path.split('?')[0]} ({r.status_code}): "
                                  "use a hub admin's token or one whose role has the scopes `gpuhub status --help` lists")
        r.raise_for_status()
        return r.json()

    def progress(self, user: str, server: str) -> list[str]:
        """The messages of a pending start so far (its progress stream, read for a short while)."""
        path = f"/hub/api/users/{quote(user, safe='')}/servers/{quote(server, safe='')}/progress"
        messages: list[str] = []
        deadline = time.monotonic() + self.progress_wait
        try:
            with self.session.get(self.url + path, stream=True, timeout=(self.timeout, self.progress_wait)) as r:
                if r.status_code != 200:
                    return messages
                for line in r.iter_lines():
                    if line.startswith(b"data:"):
                        event = json.loads(line[5:])
                        if event.get("message"):
                            messages.append(event["message"])
                        if event.get("ready") or event.get("failed"):
                            break
                    if time.monotonic() > deadline:
                        break
        except (requests.RequestException, ValueError):
            pass  # read timeout: nothing new within progress_wait, which is the normal end
        return messages

    def metrics(self, path: str) -> dict[str, dict[str, float]]:
        """``name -> {pool label: value}`` of a Prometheus text endpoint."""
        r = self.get(path)
        r.raise_for_status()
        out: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[sample.labels.get("pool", "")] = sample.value
        return out


#: what the token must hold (the hub filters lists to what a token may see: without these the
#: report would look empty rather than fail)
NEEDED_SCOPES = ("list:users", "read:users", "read:servers", "list:services", "read:services", "read:metrics")


def hub_part(hub: HubReader, report: rpt.Report) -> bool:
    """The hub answers, and the token is known to it with the scopes the report needs."""
    try:
        info = hub.api("/")
        report.hub = {"url": hub.url, "answering": True, "version": info.get("version", "")}
    except (requests.RequestException, ValueError, PermissionError) as e:
        report.hub = {"url": hub.url, "answering": False, "version": ""}
        report.problems.append(f"the hub at {hub.url}: {_why(e)}; is it running? (docker service ps, or its log)")
        return False
    try:
        scopes = set(hub.api("/user").get("scopes") or [])
    except (requests.RequestException, ValueError, PermissionError) as e:
        report.problems.append(_why(e))
        return False
    missing = [s for s in NEEDED_SCOPES if s not in scopes]
    if missing:
        report.problems.append(f"the token lacks {', '.join(missing)}: what needs them is left out "
                               "(use a hub admin's token, or add them to the token's role)")
    return True


def services_part(hub: HubReader, report: rpt.Report) -> None:
    """Each hub-managed service (one with a URL): does it answer behind the proxy?"""
    try:
        services = hub.api("/services")
    except (requests.RequestException, ValueError, PermissionError) as e:
        report.problems.append(f"the hub's list of services: {_why(e)}")
        return
    for name, model in sorted((services or {}).items()):
        if not model.get("url") or not model.get("prefix"):
            continue  # a token-only service (e.g. prometheus): nothing to ask
        try:
            code = hub.get(model["prefix"]).status_code
            answering, detail = code < 500, f"HTTP {code}" if code >= 500 else ""
        except requests.RequestException as e:
            answering, detail = False, _why(e)
        report.services.append({"name": name, "answering": answering, "detail": detail})


def queue_part(hub: HubReader, report: rpt.Report) -> None:
    """Who is starting: the place in line each pending start was last told."""
    try:
        users = hub.api("/users?state=active&limit=1000")
        users = users["items"] if isinstance(users, dict) else users
    except (requests.RequestException, ValueError, PermissionError, KeyError, TypeError) as e:
        report.problems.append(f"the hub's users: {_why(e)}")
        return
    waiting = []
    for user in users:
        for server, model in (user.get("servers") or {}).items():
            if model.get("pending") == "spawn":
                waiting.append(rpt.waiting_from_progress(user["name"], server, hub.progress(user["name"], server)))
    report.queue = rpt.queue_report(waiting)


def metrics_part(hub: HubReader, report: rpt.Report, exporter_prefix: str | None) -> None:
    try:
        lengths = hub.metrics("/hub/metrics").get("gpuhub_queue_length", {})
        report.queue_lengths = {pool: int(n) for pool, n in sorted(lengths.items())}
    except (requests.RequestException, ValueError) as e:
        report.problems.append(f"the hub's metrics (line lengths): {_why(e)}")
    if exporter_prefix and not report.pools:
        try:
            report.pools = rpt.pools_from_metrics(hub.metrics(exporter_prefix.rstrip("/") + "/metrics"))
        except (requests.RequestException, ValueError) as e:
            report.problems.append(f"the hub exporter's metrics (pools): {_why(e)}")


def docker_part(client: Any, report: rpt.Report, stack: str) -> None:
    """Nodes and pools of the swarm, and the stack's services (nothing when not a swarm)."""
    api = client.api
    if (client.info().get("Swarm") or {}).get("LocalNodeState") != "active":
        return
    services = api.services(filters={"label": LABEL_HUB})
    view = ClusterView.read(api.nodes(), api.tasks(), {s["ID"]: s["Spec"]["Name"] for s in services})
    report.nodes = rpt.nodes_report(view)
    report.pools = rpt.pools_from_view(view)
    stack_services = api.services(filters={"label": f"{STACK_LABEL}={stack}"})
    report.stack = sorted((rpt.stack_service_report(s, api.tasks(filters={"service": s["ID"]}))
                           for s in stack_services), key=lambda s: s["name"])


def collect(hub: HubReader, docker_client: Any | None, stack: str, exporter_prefix: str | None) -> rpt.Report:
    report = rpt.Report()
    usable = hub_part(hub, report)
    if usable:
        services_part(hub, report)
        queue_part(hub, report)
    if docker_client is not None:
        try:
            docker_part(docker_client, report, stack)
        except Exception as e:  # noqa: BLE001 - the engine's errors are many; say it, go on
            report.problems.append(f"the Docker engine: {_why(e)}")
    if usable:
        metrics_part(hub, report, exporter_prefix)
    return report


def _why(e: BaseException) -> str:
    text = str(e).split("\n")[0]
    return text[:200] or type(e).__name__
