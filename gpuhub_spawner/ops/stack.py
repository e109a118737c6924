"""``gpuhub backup|restore|upgrade --stack NAME``: the same operations on a deployed stack.

They run inside the stack's containers through the Docker API of the manager (``DOCKER_HOST``,
as for ``gpuhub deploy``), so the operator needs neither the database password nor a shell in
a container: the hub's container already has the password (its ``db_password`` secret, read
from ``PGPASSWORD_FILE``), the data volume and ``pg_dump``.

- backup: ``gpuhub backup`` runs in the running hub's container (an online copy); the archive
  is copied out with ``get_archive`` and removed there.  Its secrets are the hub's swarm
  secrets (``/run/secrets``).
- restore: the hub service must be at 0 replicas (``--stop-hub`` scales it to 0 and back).  A
  one-off service ``<stack>_ops`` made from the hub service's own spec (image, volumes,
  secrets, networks without the hub's aliases, pinned to this manager) sleeps; the archive goes
  in with ``put_archive`` and ``gpuhub restore`` runs there.  The stack keeps its own swarm
  secrets: the backup's are written beside the deploy secrets dir for the operator to use.
- upgrade: a backup copied out first; the hub scaled to 0; ``gpuhub upgrade`` (its own
  restore-tested backup in the volume, then the migrations) in an ops service running the NEW
  image; then the hub service runs the new image at its old replica count.  On failure the hub
  stays at 0 with the old image, and the roll-back is ``gpuhub restore FILE --stack NAME --yes``.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpuhub_spawner.ops import archive
from gpuhub_spawner.ops.manifest import OpsError
from gpuhub_spawner.ops.upgrade import UpgradeFailed, UpgradeReport

#: where the hub image keeps its state, and where archives pass through inside a container
DATA_DIR = "/srv/gpuhub/data"
INBOX = f"{DATA_DIR}/backups"
_ENDED = {"shutdown", "complete", "failed", "rejected", "orphaned", "remove"}


def connect() -> Any:
    """The manager's engine named by DOCKER_HOST (checked as ``gpuhub deploy`` checks it)."""
    from gpuhub_spawner.deploy.deploycli import DeployError
    from gpuhub_spawner.deploy.deploycli import connect as deploy_connect

    try:
        return deploy_connect(dict(os.environ))
    except DeployError as e:
        raise OpsError(str(e)) from None


def hub_service(client: Any, stack: str) -> Any:
    import docker

    try:
        return client.services.get(f"{stack}_hub")
    except docker.errors.NotFound:
        raise OpsError(f"no service {stack}_hub on this swarm: name the stack gpuhub deploy made (docker stack ls)") from None


def replicas(service: Any) -> int:
    service.reload()
    return int(service.attrs["Spec"]["Mode"].get("Replicated", {}).get("Replicas", 0))


def container_of(client: Any, service_name: str, timeout: float = 180) -> Any:
    """The running container of ``service_name`` on this engine (waits for it to start)."""
    deadline = time.monotonic() + timeout
    while True:
        found = client.containers.list(filters={"label": f"com.docker.swarm.service.name={service_name}",
                                                "status": "running"})
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise OpsError(f"no running container of {service_name} on this engine after {timeout:.0f}s: run this on the "
                           f"manager where it runs (docker service ps {service_name}), with DOCKER_HOST at its socket")
        time.sleep(1)


def scale(service: Any, count: int, timeout: float = 180) -> None:
    """Scale ``service`` to ``count`` and wait for it (:func:`wait_tasks`).

    The engine refuses an update made from an older version of the spec ("update out of
    sequence": the swarm itself bumps it as tasks change): read it again and retry.
    """
    import docker

    for attempt in range(5):
        service.reload()
        try:
            service.scale(count)
            break
        except docker.errors.APIError as e:
            if "out of sequence" not in str(e) or attempt == 4:
                raise
            time.sleep(1)
    wait_tasks(service, count, timeout)


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """The Docker API's errors as :class:`OpsError` saying what was being done."""
    import docker
    import requests

    try:
        yield
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise OpsError(f"{what}: the Docker engine failed or refused ({str(e)[:400]}); docker service ls on the "
                       "manager shows where the stack was left") from None


def wait_tasks(service: Any, count: int, timeout: float) -> None:
    """Wait until ``count`` tasks of ``service`` run (0: until every task has ended)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [t["Status"]["State"] for t in service.tasks() if t.get("DesiredState") == "running"
                  or t["Status"]["State"] not in _ENDED]
        running = sum(1 for s in states if s == "running")
        if (count == 0 and not states) or (count and running >= count):
            return
        if time.monotonic() > deadline:
            raise OpsError(f"{service.name} did not reach {count} running replica(s) in {timeout:.0f}s "
                           f"(docker service ps {service.name} says why)")
        time.sleep(1)


def run_in(container: Any, *cmd: str) -> tuple[int, str, str]:
    code, (out, err) = container.exec_run(list(cmd), demux=True)
    return code, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")


def copy_out(container: Any, path: str, dest: Path) -> None:
    """Copy the file ``path`` out of ``container`` to ``dest`` (mode 0600)."""
    stream, _ = container.get_archive(path)
    buffer = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=buffer) as tar:
        member = next(m for m in tar if m.isfile())
        data = tar.extractfile(member)
        assert data is not None
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data.read())
    os.chmod(dest, 0o600)


def copy_in(container: Any, source: Path, folder: str, name: str) -> None:
    run_in(container, "mkdir", "-p", "-m", "0700", folder)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tar.gettarinfo(str(source), arcname=name)
        info.mode, info.uid, info.gid = 0o600, 0, 0
        with open(source, "rb") as f:
            tar.addfile(info, f)
    if not container.put_archive(folder, buffer.getvalue()):
        raise OpsError(f"could not copy the archive into {container.name}")


def _inner(container: Any, what: str, *cmd: str) -> str:
    code, out, err = run_in(container, "gpuhub", *cmd)
    if code != 0:
        said = (err or out).strip()
        failed = [line.split("FAILED: ", 1)[1] for line in said.splitlines() if "FAILED: " in line]
        reason = failed[0] if failed else said[-1500:].removeprefix(f"gpuhub {cmd[0]}: ")
        raise OpsError(f"{what} in {container.name} failed (exit {code}): {reason}")
    return out


# ---- the one-off service ----------------------------------------------------------------------


def _ops_spec(client: Any, hub: Any, image: str | None) -> dict[str, Any]:
    task = dict(hub.attrs["Spec"]["TaskTemplate"])
    spec = dict(task["ContainerSpec"])
    spec.pop("Command", None)
    spec["Args"] = ["sleep", "infinity"]
    spec["Healthcheck"] = {"Test": ["NONE"]}
    if image:
        spec["Image"] = image
    task["ContainerSpec"] = spec
    task["Networks"] = [{"Target": n["Target"]} for n in task.get("Networks", [])]
    task["RestartPolicy"] = {"Condition": "none"}
    node = client.info()["Swarm"]["NodeID"]
    task["Placement"] = {"Constraints": [f"node.id == {node}"]}
    return task


@contextmanager
def ops_container(client: Any, stack: str, image: str | None = None) -> Iterator[Any]:
    """A container made from the hub service's spec (``image``: another image), removed afterwards."""
    import docker

    hub = hub_service(client, stack)
    name = f"{stack}_ops"
    try:
        client.services.get(name).remove()
        time.sleep(1)
    except docker.errors.NotFound:
        pass
    labels = {**hub.attrs["Spec"].get("Labels", {}), "org.gpuhub.ops": "1"}
    created = client.api.create_service(_ops_spec(client, hub, image), name=name, labels=labels,
                                        mode={"Replicated": {"Replicas": 1}}, endpoint_spec={"Mode": "dnsrr"})
    service = client.services.get(created["ID"])
    try:
        yield container_of(client, name)
    finally:
        service.remove()


# ---- the commands ---------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def backup(stack: str, out: Path | None) -> tuple[Path, dict[str, Any]]:
    """Back up the running stack's hub into the local archive ``out``; its path and manifest."""
    client = connect()
    try:
        out = backup_from(container_of(client, hub_service(client, stack).name, timeout=30), stack, out)
    finally:
        client.close()
    with _private_tmp(out.parent) as tmp:
        return out, archive.read(out, tmp)


def backup_from(container: Any, stack: str, out: Path | None) -> Path:
    """Run ``gpuhub backup`` in ``container`` and copy the archive out to ``out``; its path."""
    name = f"gpuhub-backup-{stack}-{_now()}.tar.gz"
    _inner(container, "gpuhub backup", "backup", "--out", f"{INBOX}/{name}", "--secrets-dir", "/run/secrets")
    out = (out or Path.cwd() / name).resolve()
    try:
        copy_out(container, f"{INBOX}/{name}", out)
    finally:
        run_in(container, "rm", "-f", f"{INBOX}/{name}")
    return out


@contextmanager
def _private_tmp(near: Path) -> Iterator[Path]:
    from gpuhub_spawner.ops.local import private_dir

    with private_dir(near) as tmp:
        yield tmp


def _stopped_hub(client: Any, stack: str, stop_hub: bool) -> tuple[Any, int]:
    hub = hub_service(client, stack)
    count = replicas(hub)
    if count and not stop_hub:
        raise OpsError(f"the hub service {hub.name} runs ({count} replica(s)): stop it (docker service scale "
                       f"{hub.name}=0), or add --stop-hub to let this scale it to 0 and back. Nothing was changed.")
    if count:
        scale(hub, 0)
    return hub, count


def restore(stack: str, path: Path, yes: bool, stop_hub: bool, secrets_dir: Path, image: str | None = None) -> list[str]:
    """Restore the archive ``path`` into the stack; lines saying what was done."""
    path = path.resolve()
    with _private_tmp(path.parent) as tmp:
        manifest = archive.read(path, tmp)  # refuse a damaged archive before stopping anything
        lines = _keep_secrets(tmp, manifest, secrets_dir)
    client = connect()
    try:
        hub, count = _stopped_hub(client, stack, stop_hub)
        try:
            with ops_container(client, stack, image) as container:
                copy_in(container, path, INBOX, path.name)
                cmd = ["restore", f"{INBOX}/{path.name}", "--secrets-dir", "/tmp/gpuhub-restored-secrets"]
                out = _inner(container, "gpuhub restore", *cmd, *(["--yes"] if yes else []))
                run_in(container, "rm", "-rf", f"{INBOX}/{path.name}", "/tmp/gpuhub-restored-secrets")
        finally:
            if count:
                scale(hub, count, timeout=420)
    finally:
        client.close()
    inner = [line.removeprefix("gpuhub restore: ") for line in out.splitlines() if line.strip()]
    started = [f"the hub service {hub.name} runs again ({count} replica(s))"] if count else [
        f"the hub service {hub.name} is at 0 replicas: start it with docker service scale {hub.name}=1"]
    inner = [line for line in inner if not line.startswith("done") and "/tmp/gpuhub-restored-secrets" not in line]
    return inner + lines + started


def _keep_secrets(tmp: Path, manifest: dict[str, Any], secrets_dir: Path) -> list[str]:
    """Put the backup's secrets beside the deploy secrets dir (the stack keeps its own swarm secrets)."""
    names = [m.split("/", 1)[1] for m in manifest["files"] if m.startswith("secrets/")]
    if not names:
        return []
    aside = secrets_dir.with_name(f"{secrets_dir.name}.from-backup-{_now()}")
    aside.mkdir(parents=True, mode=0o700)
    for name in names:
        fd = os.open(aside / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write((tmp / "secrets" / name).read_bytes())
    return [f"the stack keeps its own secrets; the backup's ({', '.join(names)}) are in {aside}: to use its "
            f"crypt_key (users' stored sign-in state), copy it into {secrets_dir} and run gpuhub deploy again"]


def upgrade(stack: str, image: str | None, out: Path | None) -> UpgradeReport:
    """Upgrade the stack's databases and hub image (see the module's docstring)."""
    client = connect()
    try:
        hub = hub_service(client, stack)
        old = hub.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        new = image or old.split("@", 1)[0]
        _ensure_image(client, new)
        hub, count = _stopped_hub(client, stack, stop_hub=True)
        try:
            report = _upgrade_in(client, stack, new, out, f"(the hub service {hub.name} is left at 0 replicas, on {old})")
        except UpgradeFailed:
            raise
        except OpsError:  # before any migration: nothing changed, the hub runs again as it was
            scale(hub, count, timeout=420)
            raise
        _run_image(client, hub, new, max(count, 1))
        report.lines.append(f"the hub service {hub.name} runs {new} ({max(count, 1)} replica(s)); it ran {old}")
    finally:
        client.close()
    return report


def _upgrade_in(client: Any, stack: str, image: str, out: Path | None, left: str) -> UpgradeReport:
    """Backup (copied out), then ``gpuhub upgrade``, in an ops container of the new ``image``.

    The new image's gpuhub takes the backup: an older release may have no ``gpuhub backup``.
    """
    with ops_container(client, stack, image) as container:
        path = backup_from(container, stack, out)
        report = UpgradeReport(path, [f"backed up to {path} (copied out of the stack)"])
        try:
            inner = _inner(container, "gpuhub upgrade", "upgrade", "--secrets-dir", "/run/secrets")
        except OpsError as e:
            raise UpgradeFailed(f"{e} {left}", path) from None
    for line in inner.splitlines():
        line = line.removeprefix("gpuhub upgrade: ")
        if line.startswith("backed up to "):
            report.lines.append(f"a second copy stays in the hub's data volume: {line.removeprefix('backed up to ')}")
        elif line.strip() and not line.startswith("done"):
            report.lines.append(line)
    return report


def _ensure_image(client: Any, image: str) -> None:
    from gpuhub_spawner.deploy.deploycli import DeployError, ensure_images

    try:
        ensure_images(client, [image], dict(os.environ), dry_run=False)
    except DeployError as e:
        raise OpsError(str(e)) from None


def _run_image(client: Any, hub: Any, image: str, count: int) -> None:
    """``docker service update --image`` and the replica count back, then wait for it to run."""
    hub.reload()
    task = dict(hub.attrs["Spec"]["TaskTemplate"])
    task["ContainerSpec"] = {**task["ContainerSpec"], "Image": image}
    task["ForceUpdate"] = int(task.get("ForceUpdate", 0)) + 1
    client.api.update_service(hub.id, hub.attrs["Version"]["Index"], task_template=task,
                              mode={"Replicated": {"Replicas": count}}, fetch_current_spec=True)
    wait_tasks(client.services.get(hub.id), count, timeout=420)
