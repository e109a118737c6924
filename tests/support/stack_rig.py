"""The swarm rig for tests of the deployed stack (`gpuhub deploy`, tests/deploy, tests/ops,
tests/workshop): the images checked, a manager in a fresh swarm, and a previous run's stack
volumes removed (the rig's node state persists between runs, and a kept database volume holds
the password of that run's secrets directory, which is gone).  `gpuhub deploy` itself reloads
an image the manager holds in another build."""

from __future__ import annotations

import docker
from needs import unavailable
from swarm_rig import NODE_IMAGE, SwarmRig

from gpuhub_spawner.deploy import stack


def require_images(host: docker.DockerClient) -> None:
    for image in [NODE_IMAGE, *stack.IMAGES.values()]:
        try:
            host.images.get(image)
        except docker.errors.ImageNotFound:
            unavailable(f"image {image} missing: run images/build.sh stack (and node)")


def start_manager(rig: SwarmRig, stack_name: str = "gpuhub") -> None:
    """``rig``'s manager leading a fresh swarm, with no volume of an earlier ``stack_name`` (the
    caller tears the rig down, also when this raises)."""
    require_images(rig.host)
    rig.create_network()
    rig.init_swarm(rig.start_node("manager", 0))
    client = rig.manager_client()
    try:
        for volume in client.volumes.list(filters={"name": f"{stack_name}_"}):
            volume.remove(force=True)
    finally:
        client.close()
