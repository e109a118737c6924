"""``gpuhub deploy``: the stack of deploy/stack on the swarm manager named by DOCKER_HOST.

    gpuhub deploy [--config gpuhub.yaml] [--render] [--dry-run] [--timeout S]

It checks the config (refusing with its errors), that the engine is a swarm manager, makes the
missing secrets in ``deploy.secrets_dir`` (never printed), creates the swarm secrets and the
hub's config (versioned names), gets the images onto the manager (``images/build.sh`` on the
local engine, else ``docker save | docker load`` from it), runs ``docker stack deploy``, pushes
``deploy.push_images`` into the stack's registry, waits (bounded) for every service to be
healthy, and prints the URL and what to do next.  Running it again changes nothing that is
already right.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import yaml
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from gpuhub_spawner.core import dockerhost
from gpuhub_spawner.core.config import ConfigFileError, GPUHubConfig, check_file
from gpuhub_spawner.core.hubconfig import error_line
from gpuhub_spawner.deploy import grafana, secretstore, stack
from gpuhub_spawner.deploy.secretstore import SecretError

LABEL = "org.gpuhub.stack"
REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "images" / "build.sh"
#: images/build.sh target of each stack image
BUILD_TARGET = {"gpuhub/hub:latest": "hub", "gpuhub/postgres:latest": "postgres",
                "gpuhub/registry:latest": "registry", "gpuhub/caddy:latest": "caddy",
                "gpuhub/prometheus:latest": "prometheus", "gpuhub/singleuser:latest": "singleuser",
                "gpuhub/pytorch:latest": "pytorch", "gpuhub/workshop:latest": "workshop"}


class DeployError(Exception):
    """What stopped the deploy, and what to do (one or more lines)."""


def say(line: str) -> None:
    print(f"gpuhub deploy: {line}", flush=True)


# ---- the engine -------------------------------------------------------------------------


def connect(environ: dict[str, str]) -> docker.DockerClient:
    """The manager's engine: DOCKER_HOST (a unix socket, or TCP with mutual TLS only)."""
    url = environ.get("DOCKER_HOST", "")
    try:
        dockerhost.require_mutual_tls(url, environ, "DOCKER_HOST")
        client = docker.from_env(environment=environ, timeout=120)
        info = client.info()
    except dockerhost.DockerHostError as e:
        raise DeployError(str(e)) from None
    except DockerException as e:
        raise DeployError(f"no Docker engine answers at {url or 'the local socket'} ({e}): start dockerd, "
                          "or point DOCKER_HOST at the manager's socket") from None
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        raise DeployError("this engine is not in a swarm: run docker swarm init first "
                          "(on one machine too: a one-node swarm), then gpuhub deploy again")
    if not swarm.get("ControlAvailable"):
        raise DeployError("this node is not a manager: run gpuhub deploy on a swarm manager "
                          "(docker node ls there), or point DOCKER_HOST at one")
    return client


def is_local(environ: dict[str, str]) -> bool:
    url = environ.get("DOCKER_HOST", "")
    return url in ("", "unix:///var/run/docker.sock", "unix:///run/docker.sock")


# ---- secrets and the hub's config -------------------------------------------------------


def gather_secrets(cfg: GPUHubConfig, environ: dict[str, str], dry_run: bool) -> dict[str, bytes | None]:
    """Each secret of the stack, made where missing (values never printed)."""
    deploy = cfg.deploy
    folder = Path(deploy.secrets_dir)
    optional = tuple(n for n in ("tutorials_token",) if (folder / n).exists() or environ.get(secretstore.GIVEN[n]))
    values: dict[str, bytes | None] = {}
    for name in stack.secrets_needed(cfg, optional):
        if name in ("tls_cert", "tls_key"):
            path = deploy.tls.cert_file if name == "tls_cert" else deploy.tls.key_file
            values[name] = secretstore.read_file(path, f"deploy.tls.{name[4:]}_file")
            continue
        value, how = secretstore.ensure(folder, name, environ, dry_run)
        if how != "kept":
            say(f"secret {name}: {how} ({folder / name})")
        values[name] = value
    return values


def create_secrets(client: docker.DockerClient, stack_name: str, values: dict[str, bytes | None],
                   dry_run: bool) -> dict[str, str]:
    """The swarm secrets (one per value, versioned by digest); returns name -> version."""
    have = {s.name for s in client.secrets.list(filters={"label": f"{LABEL}={stack_name}"})}
    versions = {}
    for name, value in values.items():
        versions[name] = secretstore.version(value) if value is not None else "new"
        full = stack.secret_name(stack_name, name, versions[name])
        if full in have:
            continue
        say(f"{'would create' if dry_run else 'creating'} swarm secret {full}")
        if not dry_run:
            client.secrets.create(name=full, data=value, labels={LABEL: stack_name})
    return versions


def create_config(client: docker.DockerClient, cfg: GPUHubConfig, dry_run: bool) -> str:
    """The hub's gpuhub.yaml as a swarm config (versioned by digest); returns the version."""
    text = yaml.safe_dump(stack.hub_config(cfg), sort_keys=True).encode()
    return _swarm_config(client, cfg.deploy.stack_name, "gpuhub_yaml", text, "the hub's gpuhub.yaml", dry_run)


def _swarm_config(client: docker.DockerClient, stack_name: str, name: str, data: bytes, what: str,
                  dry_run: bool) -> str:
    """Swarm config ``<stack>_<name>_<digest of data>``, created unless it exists; the digest."""
    version = secretstore.version(data)
    full = f"{stack_name}_{name}_{version}"
    try:
        client.configs.get(full)
    except NotFound:
        say(f"{'would create' if dry_run else 'creating'} swarm config {full} ({what})")
        if not dry_run:
            client.configs.create(name=full, data=data, labels={LABEL: stack_name})
    return version


def create_file_configs(client: docker.DockerClient, cfg: GPUHubConfig, dry_run: bool) -> dict[str, str]:
    """The Grafana files of deploy/grafana as swarm configs (versioned by digest), when the stack
    runs Grafana; returns name -> version."""
    if not cfg.deploy.grafana_image:
        return {}
    versions = {}
    for name, (source, _target) in grafana.FILES.items():
        try:
            data = (REPO / source).read_bytes()
        except OSError as e:
            raise DeployError(f"cannot read {REPO / source} ({e.strerror}): run gpuhub deploy from gpuhub's "
                              "checkout, or set deploy.grafana_image to empty") from None
        versions[name] = _swarm_config(client, cfg.deploy.stack_name, name, data, source, dry_run)
    return versions


# ---- images -----------------------------------------------------------------------------


def build_locally(image: str) -> None:
    target = BUILD_TARGET.get(image)
    if target is None or not BUILD_SH.exists():
        raise DeployError(f"the image {image} is missing and gpuhub cannot build it here: build or pull it "
                          "on this machine, then gpuhub deploy again")
    say(f"building {image} (images/build.sh {target}; minutes the first time)")
    done = subprocess.run([str(BUILD_SH), target], stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise DeployError(f"images/build.sh {target} failed (exit {done.returncode}): its output is above")


def _image_id(client: docker.DockerClient, image: str) -> str:
    try:
        return client.images.get(image).id
    except ImageNotFound:
        return ""


def _needs_copy(client: docker.DockerClient, local: docker.DockerClient, image: str) -> bool:
    """The manager lacks ``image``, or holds another build of it than this machine's."""
    have, want = _image_id(client, image), _image_id(local, image)
    return not have or bool(want and want != have)


def ensure_images(client: docker.DockerClient, images: list[str], environ: dict[str, str], dry_run: bool) -> None:
    """Each image on the manager: built there when it is this machine's engine, else copied
    from this machine's engine with docker save | docker load (also when the manager holds
    another build under the same name: this machine's is the one being deployed)."""
    if is_local(environ):
        missing = [i for i in images if not _image_id(client, i)]
        if dry_run and missing:
            say("would build: " + ", ".join(missing))
        for image in [] if dry_run else missing:
            build_locally(image)
        return
    local = docker.from_env(environment={k: v for k, v in environ.items() if not k.startswith("DOCKER_")},
                            timeout=900)
    try:
        stale = [i for i in images if _needs_copy(client, local, i)]
        if dry_run:
            if stale:
                say("would get onto the manager: " + ", ".join(stale))
            return
        for image in stale:
            if not _image_id(local, image):
                build_locally(image)
            say(f"loading {image} into the manager's engine (docker save | docker load)")
            client.images.load(local.api.get_image(image))
            if _image_id(client, image) != _image_id(local, image):
                raise DeployError(f"{image} was loaded but the manager does not list it: load it by hand")
    finally:
        local.close()


def push_images(client: docker.DockerClient, cfg: GPUHubConfig, dry_run: bool) -> None:
    """``deploy.push_images`` into the stack's registry volume, through a registry that listens
    on the manager's loopback only for the push (the stack's own registry is read-only)."""
    images = cfg.deploy.push_images
    if not images:
        return
    if dry_run:
        say("would push into the stack's registry: " + ", ".join(images))
        return
    volume = f"{cfg.deploy.stack_name}_registry-data"
    pusher = client.containers.run(
        stack.IMAGES["registry"], detach=True, auto_remove=False,
        name=f"{cfg.deploy.stack_name}-registry-push-{os.getpid()}",
        ports={"5000/tcp": ("127.0.0.1", None)}, volumes={volume: {"bind": stack.REGISTRY_DATA, "mode": "rw"}},
        labels={LABEL: cfg.deploy.stack_name},
    )
    try:
        port = _published_port(pusher)
        for image in images:
            _push_one(client, image, f"127.0.0.1:{port}")
    finally:
        pusher.remove(force=True)


def _published_port(container: Any, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        ports = (container.attrs["NetworkSettings"].get("Ports") or {}).get("5000/tcp") or []
        if ports and container.status == "running":
            code, _ = container.exec_run(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/5000"])
            if code == 0:
                return ports[0]["HostPort"]
        time.sleep(0.5)
    raise DeployError(f"the push registry did not start: {container.logs(tail=5).decode(errors='replace')}")


def _push_one(client: docker.DockerClient, image: str, registry: str) -> None:
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    temp = f"{registry}/{repo}"
    say(f"pushing {image} into the stack's registry")
    client.images.get(image).tag(temp, tag)
    try:
        for line in client.api.push(temp, tag=tag, stream=True, decode=True):
            if line.get("error"):
                raise DeployError(f"pushing {image} failed: {line['error']}")
    finally:
        client.images.remove(f"{temp}:{tag}", noprune=True)


# ---- deploy and wait --------------------------------------------------------------------


def stack_deploy(document: dict[str, Any], stack_name: str, environ: dict[str, str], dry_run: bool) -> None:
    """``docker stack deploy`` of ``document`` (the images are local: no registry is asked)."""
    command = ["docker", "stack", "deploy", "--resolve-image", "never", "--prune", "-c", "-", stack_name]
    if dry_run:
        say("would run: " + " ".join(command))
        return
    say(f"deploying the stack {stack_name}")
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        f.write(stack.to_yaml(document))
        f.flush()
        command[command.index("-")] = f.name
        done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise DeployError(f"docker stack deploy failed: {done.stderr.strip() or done.stdout.strip()}")


def _current(task: dict[str, Any], service: Any) -> bool:
    """The task runs the service's present spec (image, environment, secrets, configs): after
    a deploy that changed it, the old task may still run, healthy, for a moment."""
    def key(spec: dict[str, Any]) -> tuple:
        return (spec.get("Image"), sorted(spec.get("Env") or []),
                sorted(x.get("SecretName", "") for x in spec.get("Secrets") or []),
                sorted(x.get("ConfigName", "") for x in spec.get("Configs") or []))

    want = service.attrs["Spec"]["TaskTemplate"].get("ContainerSpec") or {}
    return key(want) == key((task.get("Spec") or {}).get("ContainerSpec") or {})


def service_state(client: docker.DockerClient, service: Any) -> tuple[str, str]:
    """(state, detail) of one service: healthy, or what it is waiting for and its last error
    (the health check's last output, else the latest task error, also of a task swarm replaced)."""
    tasks = sorted(service.tasks(), key=lambda t: t.get("CreatedAt", ""), reverse=True)
    errors = [t["Status"]["Err"] for t in tasks if t["Status"].get("Err")]
    running = [t for t in tasks if t["Status"]["State"] == "running" and t.get("DesiredState") == "running"]
    if running and not _current(running[0], service):
        return "updating", "the task of the previous spec still runs"
    if not running:
        last = tasks[0]["Status"] if tasks else {}
        return last.get("State", "pending"), (errors or [last.get("Message") or "no task yet"])[0]
    container_id = (running[0]["Status"].get("ContainerStatus") or {}).get("ContainerID", "")
    try:
        state = client.containers.get(container_id).attrs["State"]
    except (NotFound, APIError):
        return "running", "its container is on another node (health not visible from here)"
    health = state.get("Health") or {}
    logs = [(entry.get("Output") or "").strip() for entry in health.get("Log") or []]
    detail = next((out for out in reversed(logs) if out), "") or (errors or [""])[0]
    # a container without a health check counts once it runs
    return health.get("Status", "healthy"), detail[-200:]


def wait_healthy(client: docker.DockerClient, stack_name: str, names: list[str], timeout: float) -> None:
    """Until every service of the stack is healthy, or DeployError naming those that are not."""
    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    while True:
        states = {}
        for name in names:
            try:
                states[name] = service_state(client, client.services.get(f"{stack_name}_{name}"))
            except NotFound:
                states[name] = ("missing", "the service does not exist")
        for name, (state, _detail) in states.items():
            if shown.get(name) != state:
                say(f"{name}: {state}")
                shown[name] = state
        bad = {n: s for n, s in states.items() if s[0] != "healthy"}
        if not bad:
            return
        if time.monotonic() > deadline:
            lines = [f"{n} is not healthy after {timeout:.0f} s ({s}): {d or 'no error recorded'}"
                     for n, (s, d) in bad.items()]
            lines.append(f"see `docker service ps {stack_name}_<service> --no-trunc` and "
                         f"`docker service logs {stack_name}_<service>` on the manager")
            raise DeployError("\n".join(lines))
        time.sleep(2)


def waited_for(document: dict[str, Any]) -> list[str]:
    """The services the deploy waits for: not the global ones (the tutorial mirror), which run
    on the GPU nodes, and those join after the first deploy."""
    return sorted(n for n, s in document["services"].items() if s["deploy"].get("mode") != "global")


def prune_unused(client: docker.DockerClient, document: dict[str, Any], stack_name: str) -> None:
    """Remove this stack's secrets and configs of earlier versions, once no service holds them."""
    keep = {s["name"] for s in document["secrets"].values()} | {c["name"] for c in document["configs"].values()}
    for kind in (client.secrets, client.configs):
        for obj in kind.list(filters={"label": f"{LABEL}={stack_name}"}):
            if obj.name in keep:
                continue
            try:
                obj.remove()
                say(f"removed {obj.name} (an earlier version)")
            except APIError:
                pass  # still held by a task that is going away: the next deploy removes it


def next_steps(client: docker.DockerClient, cfg: GPUHubConfig) -> list[str]:
    deploy = cfg.deploy
    swarm = client.swarm.attrs
    token = swarm.get("JoinTokens", {}).get("Worker", "<docker swarm join-token -q worker>")
    addr = client.info().get("Swarm", {}).get("NodeAddr", "<manager address>")
    lines = [
        f"the hub answers at {deploy.public_url}/",
        f"DNS: {deploy.domain} must point at this manager ({addr}); ports 80 and 443 open",
        f"the swarm's worker join token (keep it private): {token}",
        f"each GPU machine, as root: put that token in a file (mode 0600), then gpuhub node setup "
        f"--manager {addr}:2377 --join-token-file FILE --registry {addr}:{deploy.registry_port}",
        f"each GPU machine's node agent: gpuhub node agent install --token-file <copy of "
        f"{deploy.secrets_dir}/agent_token>",
        "each GPU node, on this manager: docker node update --label-add gpuhub.gpu=true NODE (Prometheus, "
        "the culler and the tutorial mirror find the GPU nodes by it)",
    ]
    if cfg.sign_in.authenticator == "github":
        lines.append(f"GitHub OAuth app: callback URL {deploy.public_url}/hub/oauth_callback")
    return lines


# ---- the command ------------------------------------------------------------------------


def load(path: str) -> GPUHubConfig:
    try:
        cfg = check_file(path)
    except ConfigFileError as e:
        raise DeployError("\n".join(error_line(line) for line in e.lines)) from None
    if cfg.deploy is None:
        raise DeployError(f"{path} has no deploy: section: add one (gpuhub config example shows it)")
    return cfg


def run(args: argparse.Namespace, environ: dict[str, str]) -> int:
    cfg = load(args.config)
    if args.render:
        sys.stdout.write(stack.to_yaml(stack.render(cfg), source=_source_name(args.config)))
        return 0
    client = connect(environ)
    try:
        values = gather_secrets(cfg, environ, args.dry_run)
        versions = create_secrets(client, cfg.deploy.stack_name, values, args.dry_run)
        config_version = create_config(client, cfg, args.dry_run)
        file_versions = create_file_configs(client, cfg, args.dry_run)
        manager = client.info().get("Name", "")
        document = stack.render(cfg, versions, config_version, manager=manager, file_versions=file_versions)
        images = sorted(set(stack.IMAGES.values()) - ({stack.IMAGES["db"]} if "db" not in document["services"] else set()))
        ensure_images(client, images + list(cfg.deploy.push_images), environ, args.dry_run)
        stack_deploy(document, cfg.deploy.stack_name, environ, args.dry_run)
        push_images(client, cfg, args.dry_run)
        if args.dry_run:
            return 0
        wait_healthy(client, cfg.deploy.stack_name, waited_for(document), args.timeout)
        prune_unused(client, document, cfg.deploy.stack_name)
        for line in next_steps(client, cfg):
            say(line)
        return 0
    finally:
        client.close()


def _source_name(path: str) -> str:
    return os.path.relpath(path) if not os.path.isabs(path) else path


def add_deploy_command(sub: Any) -> None:
    parser = sub.add_parser("deploy", help="deploy the hub's stack on this swarm manager (deploy/stack)")
    parser.add_argument("--config", default=os.environ.get("GPUHUB_CONFIG") or "gpuhub.yaml",
                        help="the gpuhub.yaml with a deploy: section (default: $GPUHUB_CONFIG or ./gpuhub.yaml)")
    parser.add_argument("--render", action="store_true", help="print the stack file and stop (no engine needed)")
    parser.add_argument("--dry-run", action="store_true", help="check and say what would be done; change nothing")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the services to be healthy")
    parser.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        return run(args, dict(os.environ))
    except (DeployError, SecretError) as e:
        for line in str(e).splitlines():
            print(line if line.startswith("gpuhub") else f"gpuhub deploy: {line}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired as e:
        print(f"gpuhub deploy: {' '.join(e.cmd[:3])} did not finish in {e.timeout:.0f} s", file=sys.stderr)
        return 2
