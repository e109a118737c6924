"""``gpuhub node prepull``: the server image(s) onto every node before the attendees arrive.

A one-shot global swarm service runs on every ready, active node.  Its task (from the node
agent's image, which ``gpuhub node setup`` put on every GPU node, or which the node pulls from
the stack's registry) asks its own node's engine for each image and says in one JSON line per
image what happened there: ``pulled``, ``already there`` (the engine had that very image),
``updated`` (it had an older one under that name), ``kept`` (it has one under that name but the
registry could not be asked: an offline node loaded by hand), or ``failed`` with the engine's reason.  The
manager reads those lines from the service's log, prints one line per node and image, and
removes the service.  Every wait is bounded (``--timeout`` for the whole, ``--pull-timeout``
per image on a node).

The task mounts its node's Docker socket: it is the operator's tool, never a user's, and runs
only for the prepull.  With ``--registry HOST:PORT`` (or ``deploy.registry_port`` of
``--config``, on the manager's address) image names are read from that registry, where
``gpuhub deploy`` pushed them, and each node also tags what it pulled with the image's own name
(``gpuhub/singleuser:latest``): the name in gpuhub.yaml, which servers are started with.

Inside the task: ``python -m gpuhub_spawner.node.prepull IMAGE...`` (the worker).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: the label of prepull services (a leftover one is removed by the next prepull)
PREPULL_LABEL = "org.gpuhub.prepull"
DEFAULT_AGENT_IMAGE = "gpuhub/node-agent:latest"


# ---- pure ------------------------------------------------------------------------------------

def has_registry(image: str) -> bool:
    """True when ``image`` names its registry (``host:port/…``, ``host.domain/…``, ``localhost/…``)."""
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def in_registry(image: str, registry: str) -> str:
    """``image`` as read from ``registry`` (``HOST:PORT``); a name with its own registry is kept."""
    return image if not registry or has_registry(image) else f"{registry.rstrip('/')}/{image}"


def split_tag(image: str) -> tuple[str, str | None]:
    """(repository, tag) for the engine's pull; a digest reference is passed whole."""
    if "@" in image:
        return image, None
    name, sep, tag = image.rpartition(":")
    return (name, tag) if sep and "/" not in tag else (image, "latest")


@dataclass(frozen=True)
class Outcome:
    node: str
    image: str
    result: str  # pulled / updated / already there / kept / failed
    reason: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result != "failed"

    def line(self, with_image: bool = True) -> str:
        """``node[: image]: ok (pulled, 12s)``, ``ok (already there)``, ``ok`` or ``FAILED: why``."""
        if not self.ok:
            said = f"FAILED: {self.reason or 'no reason given'}"
        elif self.result == "present":  # the image ran there: no telling whether it was pulled now
            said = "ok"
        elif self.result == "kept":  # the node has it, but the registry could not say whether it is the newest
            said = f"ok (already there; not checked for a newer one: {self.reason or 'no reason given'})"
        else:
            said = f"ok ({self.result}{f', {self.seconds:.0f}s' if self.result in ('pulled', 'updated') else ''})"
        return f"{self.node}: {self.image + ': ' if with_image else ''}{said}"


def parse_log(lines: list[str]) -> list[Outcome]:
    """The workers' JSON lines (anything else in the log is skipped)."""
    out = []
    for line in lines:
        start = line.find("{")
        try:
            data = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            continue
        if isinstance(data, dict) and {"node", "image", "result"} <= data.keys():
            out.append(Outcome(str(data["node"]), str(data["image"]), str(data["result"]),
                               str(data.get("reason", "")), float(data.get("seconds", 0))))
    return out


def report(nodes: list[str], images: list[str], outcomes: list[Outcome], task_errors: dict[str, str]) -> list[Outcome]:
    """One outcome per node and image: what the worker said, else why the node said nothing."""
    said = {(o.node, o.image): o for o in outcomes}
    full = []
    for node in sorted(nodes):
        for image in images:
            found = said.get((node, image))
            if found is None:
                why = task_errors.get(node) or "no answer within the timeout (is the node up? see docker service ps)"
                found = Outcome(node, image, "failed", why)
            full.append(found)
    return full


def explain_task_error(err: str, agent_image: str) -> str:
    if "No such image" in err or "pull access denied" in err or "manifest unknown" in err:
        return (f"the node cannot get the prepull worker's image {agent_image} ({err}): run `gpuhub node setup` "
                "there (it installs the agent), or pass --agent-image with a name in the stack's registry")
    return err


# ---- the manager side ----------------------------------------------------------------------

def run(client: Any, images: list[str], agent_image: str, timeout: float, pull_timeout: float,
        registry: str = "") -> list[Outcome]:
    """Run the worker once on every ready, active node; one outcome per node and image.

    A node whose worker said nothing (it cannot get the worker's image, or an old one) runs each
    image itself instead (``true``): that says whether the node has it (``ok``) or why not,
    without telling pulled from already there.
    """
    for old in client.services.list(filters={"label": PREPULL_LABEL}):
        old.remove()  # a prepull cut off before it cleaned up
    nodes = {n.id: n.attrs["Description"].get("Hostname", n.id[:12]) for n in client.nodes.list()
             if n.attrs["Status"]["State"] == "ready" and n.attrs["Spec"].get("Availability") == "active"}
    deadline = time.monotonic() + timeout
    env = [f"GPUHUB_PULL_TIMEOUT={pull_timeout:.0f}", "NVIDIA_VISIBLE_DEVICES=void"]
    registry_args = ["--registry", registry] if registry else []
    with _global(client, agent_image, ["python3", "-m", "gpuhub_spawner.node.prepull", *registry_args, *images], env,
                 socket=True) as worker:
        ended = _wait(worker, nodes, deadline)
        outcomes = _read_outcomes(client, worker.id, sum(1 for err in ended.values() if not _lacks_image(err))
                                  * len(images))
    errors = {node: explain_task_error(err, agent_image) for node, err in ended.items() if err}
    # no line from a node's worker (its image is missing, or too old to hold the worker)
    without_worker = set(ended) - {o.node for o in outcomes}
    for image in images if without_worker else []:
        with _global(client, image, ["true"], ["NVIDIA_VISIBLE_DEVICES=void"]) as itself:
            for node, err in _wait(itself, nodes, deadline).items():
                if node in without_worker:
                    outcomes.append(Outcome(node, image, "failed", err) if err else Outcome(node, image, "present"))
    return report(list(nodes.values()), images, outcomes, errors)


def _lacks_image(err: str) -> bool:
    return any(s in err for s in ("No such image", "pull access denied", "manifest unknown"))


@contextmanager
def _global(client: Any, image: str, command: list[str], env: list[str], socket: bool = False) -> Iterator[Any]:
    """A one-shot global service (each node runs ``command`` once), removed afterwards."""
    from docker.types import Mount, RestartPolicy, ServiceMode

    service = client.services.create(
        image, command=command, name=f"gpuhub-prepull-{int(time.time() * 1000)}", mode=ServiceMode("global"),
        restart_policy=RestartPolicy(condition="none"), labels={PREPULL_LABEL: "1"},
        env=["GPUHUB_NODE={{.Node.Hostname}}", *env],
        mounts=[Mount("/var/run/docker.sock", "/var/run/docker.sock", type="bind")] if socket else [],
    )
    try:
        yield service
    finally:
        service.remove()


def _wait(service: Any, nodes: dict[str, str], deadline: float) -> dict[str, str]:
    """node name -> its task's error ("" when it completed), for the nodes whose task ended."""
    while True:
        ended = {}
        for task in service.tasks():
            status = task["Status"]
            if task.get("NodeID") in nodes and status["State"] in {"complete", "failed", "rejected", "shutdown"}:
                ended[nodes[task["NodeID"]]] = "" if status["State"] == "complete" else status.get("Err") or status["State"]
        if len(ended) >= len(nodes) or time.monotonic() > deadline:
            return ended
        time.sleep(1)


def _read_outcomes(client: Any, service_id: str, expected: int, wait: float = 10.0) -> list[Outcome]:
    """The workers' lines from the service's log (the workers' logs reach the manager a moment
    after their tasks end: read again for up to ``wait`` seconds until all are there)."""
    deadline = time.monotonic() + wait
    while True:
        log = client.api.service_logs(service_id, stdout=True, stderr=True)
        outcomes = parse_log(b"".join(log).decode(errors="replace").splitlines())
        if len(outcomes) >= expected or time.monotonic() > deadline:
            return outcomes
        time.sleep(0.5)


def add_prepull_parser(node_commands: Any) -> Any:
    """``gpuhub node prepull``'s arguments (nodecli sets its function)."""
    pull = node_commands.add_parser(
        "prepull", help="get the server image(s) onto every node before a workshop",
        description="Pull the server image(s) on every ready, active node; one line per node and image: "
        "pulled, updated, already there, or FAILED with the reason. Exit 0 when every node has every image.",
    )
    pull.add_argument("image", nargs="*", help="images (default: images.default and deploy.push_images of "
                      "--config, else gpuhub/singleuser:latest)")
    pull.add_argument("--registry", metavar="HOST:PORT", help="read the images from this registry (default with "
                      "--config: the stack's, deploy.registry_port on the manager's address)")
    pull.add_argument("--config", help="gpuhub.yaml: the images and the stack's registry from it")
    pull.add_argument("--agent-image", default=DEFAULT_AGENT_IMAGE,
                      help="the image of the per-node worker (the node agent's, on every GPU node)")
    pull.add_argument("--agent-image-from-registry", action="store_true",
                      help="read the worker's image from the registry too (nodes without the agent)")
    pull.add_argument("--docker-host", help="manager engine URL (default: DOCKER_HOST)")
    pull.add_argument("--timeout", type=float, default=1800, help="seconds for the whole prepull")
    pull.add_argument("--pull-timeout", type=float, default=1800, help="seconds for one image on one node")
    return pull


# ---- the worker (inside the task, on each node) ---------------------------------------------

def pull_one(client: Any, image: str, timeout: float) -> dict[str, Any]:
    """Pull ``image`` on this node's engine; what happened, as the worker's JSON line says it."""
    import docker

    def image_id() -> str | None:
        try:
            return client.images.get(image).id
        except docker.errors.ImageNotFound:
            return None

    before = image_id()
    started = time.monotonic()
    failure = _pull(client, image, timeout)
    if failure:
        # a node that has the image starts servers from it (swarm uses the local image when its
        # pull fails): an offline node loaded by `gpuhub node setup` is ready, only not checked
        return {"result": "kept" if before else "failed", "reason": failure}
    after = image_id()
    seconds = round(time.monotonic() - started, 1)
    if after is None:
        return {"result": "failed", "reason": "the engine says it pulled, but has no such image"}
    result = "already there" if after == before else ("pulled" if before is None else "updated")
    return {"result": result, "seconds": seconds}


def _pull(client: Any, image: str, timeout: float) -> str:
    """Pull ``image`` within ``timeout`` seconds: "" when the engine says it is done, else why not."""
    import docker

    started = time.monotonic()
    repository, tag = split_tag(image)
    try:
        for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
            if event.get("error"):
                return str(event["error"])[:300]
            if time.monotonic() - started > timeout:
                return f"the pull took longer than {timeout:.0f}s"
    except docker.errors.APIError as e:
        return str(e.explanation or e)[:300]
    except Exception as e:  # noqa: BLE001 - a lost connection, a read timeout: say it
        return f"{type(e).__name__}: {str(e)[:200]}"
    return ""


def worker(argv: list[str]) -> int:
    """``[--registry HOST:PORT] IMAGE...``: pull each; an image read from the registry is also
    tagged with its own name (``HOST:PORT/gpuhub/x:1`` as ``gpuhub/x:1``), the name servers use."""
    import docker

    registry = argv[1] if argv[:1] == ["--registry"] else ""
    node = os.environ.get("GPUHUB_NODE", "") or os.uname().nodename
    timeout = float(os.environ.get("GPUHUB_PULL_TIMEOUT", "1800"))
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=max(60, int(timeout)))
    failed = False
    for image in argv[2:] if registry else argv:
        outcome = pull_one(client, image, timeout)
        if outcome["result"] != "failed" and registry and image.startswith(registry + "/"):
            client.images.get(image).tag(*split_tag(image[len(registry) + 1:]))
        failed |= outcome["result"] == "failed"
        print(json.dumps({"node": node, "image": image, **outcome}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
