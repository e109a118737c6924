"""``gpuhub backup|restore|upgrade --stack gpuhub`` against a stack deployed by ``gpuhub deploy`` on the rig.

One rig (a manager alone: these commands touch only the hub and its database) and one deploy
(PostgreSQL) for the module.  The rows (users, groups with quotas, named servers' state, usage)
are written into the stack's database by the previous release's code (its hub image, v0.1.0);
the commands run from outside with only DOCKER_HOST at the manager: no database password given
to them.  The upgrade then runs today's image and keeps every row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml
from needs import unavailable
from stack_rig import start_manager
from swarm_rig import SwarmRig
from testca import TestCA

STACK = "gpuhub"
PREVIOUS_IMAGE = "gpuhub/hub:0.1.0"
DOMAIN = "hub.gpuhub.test"
COUNT = """
import json, os
from sqlalchemy import create_engine, text
url = "postgresql+psycopg://gpuhub:%s@db:5432/gpuhub" % open("/run/secrets/db_password").read().strip()
with create_engine(url).connect() as c:
    q = lambda sql: c.execute(text(sql)).all()
    print(json.dumps({"users": sorted(r[0] for r in q("select name from users")),
                      "groups": {r[0]: json.loads(r[1]) if isinstance(r[1], str) else r[1]
                                 for r in q("select name, properties from groups")},
                      "usage": len(q("select * from gpuhub_usage")),
                      "spawners": sorted(r[0] for r in q("select name from spawners"))}))
"""


@pytest.fixture(scope="module")
def rig(docker_client: docker.DockerClient) -> Iterator[SwarmRig]:
    rig = SwarmRig(docker_client, prefix=os.environ.get("GPUHUB_RIG_PREFIX", "gpuhub-rig-ops"))
    try:
        start_manager(rig, STACK)
        rig.wait_nodes_ready(["manager"])
        yield rig
    finally:
        rig.teardown()


def gpuhub(rig: SwarmRig, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GPUHUB_", "PG"))},
           "DOCKER_HOST": rig.manager.url}
    return subprocess.run([sys.executable, "-m", "gpuhub_spawner.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def hub_container(client: docker.DockerClient):
    return client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_hub",
                                           "status": "running"})[0]


def in_hub(client: docker.DockerClient, script: str) -> dict:
    code, out = hub_container(client).exec_run(["python", "-c", script], demux=False)
    assert code == 0, out.decode(errors="replace")[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


#: run by today's hub image: take gpuhub's tables back to revision {target} (what v0.1.0 knows)
DOWNGRADE = """
import json
from alembic import command
from gpuhub_spawner.storage import db
url = "postgresql+psycopg://gpuhub:%s@db:5432/gpuhub" % open("/run/secrets/db_password").read().strip()
command.downgrade(db.alembic_config(url), {target!r})
print(json.dumps({{"at": {target!r}}}))
"""


def fill_with_previous_release(client: docker.DockerClient, rig: SwarmRig) -> None:
    """Rows written into the stack's database by v0.1.0's code: its hub image, run by a one-off
    service of the stack (the database's network and password secret) while the hub runs."""
    from gpuhub_spawner.deploy.deploycli import ensure_images
    from gpuhub_spawner.ops.stack import ops_container

    if not rig.host.images.list(name=PREVIOUS_IMAGE):
        unavailable(f"{PREVIOUS_IMAGE} missing: GPUHUB_HUB_SOURCE_REV=v0.1.0 GPUHUB_HUB_IMAGE={PREVIOUS_IMAGE} "
                    "images/build.sh hub")
    ensure_images(client, [PREVIOUS_IMAGE], {**os.environ, "DOCKER_HOST": rig.manager.url}, dry_run=False)
    script = (Path(__file__).with_name("statefill.py").read_text().replace('if __name__ == "__main__":', "if False:")
              + "\nfrom importlib.metadata import version\n"
              "url = 'postgresql+psycopg://gpuhub:%s@db:5432/gpuhub' % open('/run/secrets/db_password').read().strip()\n"
              "fill_hub(url)\nfill_usage(url)\nprint(json.dumps({'gpuhub': version('gpuhub')}))\n")
    with ops_container(client, STACK, PREVIOUS_IMAGE) as container:
        # today's hub, deployed first, migrated gpuhub's tables past what v0.1.0 knows (it would
        # refuse them): take them back to its newest revision, as a v0.1.0 stack's database is
        code, out = container.exec_run(
            ["python", "-c", "from gpuhub_spawner.storage.db import head_revision; print(head_revision())"])
        assert code == 0, out.decode(errors="replace")[-2000:]
        old_head = out.decode().strip().splitlines()[-1]
        assert in_hub(client, DOWNGRADE.format(target=old_head)) == {"at": old_head}
        code, out = container.exec_run(["python", "-c", script])
    assert code == 0, out.decode(errors="replace")[-2000:]
    assert json.loads(out.decode().strip().splitlines()[-1]) == {"gpuhub": "0.1.0"}


@pytest.fixture(scope="module")
def deployed(rig: SwarmRig, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("stack")
    leaf = TestCA(folder / "ca").leaf("hub", [DOMAIN])
    config = folder / "gpuhub.yaml"
    config.write_text(yaml.safe_dump({
        "sign_in": {"admin_users": ["prof"]},
        "profiles": [{"slug": "cpu", "display_name": "CPU only", "pool": None}],
        "deploy": {"public_url": f"https://{DOMAIN}", "secrets_dir": str(folder / "secrets"), "stack_name": STACK,
                   "tls": {"mode": "files", "cert_file": str(leaf.cert), "key_file": str(leaf.key)}},
    }))
    done = gpuhub(rig, "deploy", "--config", str(config), "--timeout", "420", timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = rig.manager_client()
    fill_with_previous_release(client, rig)
    yield {"config": config, "folder": folder, "client": client}
    client.close()


def test_backup_restore_upgrade_on_the_stack(deployed, rig):
    client, folder = deployed["client"], deployed["folder"]
    before = in_hub(client, COUNT)
    assert {"ada", "bob", "cy", "prof"} <= set(before["users"]) and before["usage"] == 3
    archive = folder / "stack-backup.tar.gz"
    backup = gpuhub(rig, "backup", "--stack", STACK, "--out", str(archive))
    assert backup.returncode == 0, backup.stderr[-3000:]
    assert "holds secrets" in backup.stdout
    db_password = (folder / "secrets" / "db_password").read_text().strip()
    assert db_password not in backup.stdout + backup.stderr
    with tarfile.open(archive) as tar:
        assert {"db/hub+usage.pgdump", "secrets/crypt_key", "data/jupyterhub_cookie_secret"} <= set(tar.getnames())

    refused = gpuhub(rig, "restore", str(archive), "--stack", STACK, "--yes")
    assert refused.returncode == 2 and "--stop-hub" in refused.stderr, refused.stdout + refused.stderr

    in_hub(client, COUNT.replace("print(", "c.execute(text(\"delete from gpuhub_usage\")); c.commit(); print("))
    assert in_hub(client, COUNT)["usage"] == 0
    restored = gpuhub(rig, "restore", str(archive), "--stack", STACK, "--stop-hub", "--yes",
                      "--config", str(deployed["config"]))
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert "runs again" in restored.stdout and "as in the backup" in restored.stdout
    assert in_hub(client, COUNT) == before

    upgraded = gpuhub(rig, "upgrade", "--stack", STACK, "--out", str(folder / "pre-upgrade.tar.gz"))
    assert upgraded.returncode == 0, upgraded.stdout[-3000:] + upgraded.stderr[-3000:]
    assert "every row of the hub+usage database kept" in upgraded.stdout
    assert (folder / "pre-upgrade.tar.gz").is_file()
    assert in_hub(client, COUNT) == before
