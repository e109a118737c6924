"""A user's server follows the hub to a new address.

In the stack a server checks every request's token with the hub API by the hub's name on the
user network.  When swarm replaces the hub container, that name points at a new address; the
server's HTTP client (aiohttp, as JupyterHub's singleuser uses it) must follow within seconds.
With aiodns installed it resolved through c-ares, whose cache keeps Docker DNS's answers for
their 600 s TTL: every server kept calling the dead address for up to 10 minutes and its user
got "Failed to connect to Hub API" (the workshop day found it).  The image drops aiodns; here a
real container of the image, on a real Docker network, watches the name move.
"""

from __future__ import annotations

import secrets

import docker
import pytest
from harness import IMAGE
from polling import wait_for

pytestmark = pytest.mark.docker

#: answers every GET with its own letter (argv[1]): which "hub" answered
HUB = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8081), H).serve_forever()
"""

#: the server side: one aiohttp session for its whole life (JupyterHub's singleuser keeps one),
#: asking the hub's name twice a second and printing who answered (or "-" when nobody did)
CLIENT = """
import asyncio, aiohttp
async def main():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            try:
                async with session.get("http://the-hub:8081/") as r:
                    print(await r.text(), flush=True)
            except Exception:
                print("-", flush=True)
            await asyncio.sleep(0.5)
asyncio.run(main())
"""


def test_a_servers_hub_client_follows_the_hub_to_a_new_address(docker_client: docker.DockerClient):
    tag = secrets.token_hex(4)
    labels = {"org.gpuhub.test": f"hub-dns-{tag}"}
    net = docker_client.networks.create(f"gpuhub-test-dns-{tag}", driver="bridge", labels=labels)
    made = []

    def start(name: str, command: list[str], alias: str | None = None):
        container = docker_client.containers.create(IMAGE, command, name=f"gpuhub-test-dns-{name}-{tag}",
                                                    labels=labels, user="1000")
        made.append(container)
        net.connect(container, aliases=[alias] if alias else None)
        docker_client.networks.get("bridge").disconnect(container)
        container.start()
        return container

    def answers(client) -> list[str]:
        return client.logs(stdout=True, stderr=False).decode().split()

    try:
        first = start("a", ["python3", "-c", HUB, "A"], alias="the-hub")
        client = start("server", ["python3", "-c", CLIENT])
        wait_for(lambda: "A" in answers(client), 60, "the server reaching the first hub")
        # the new hub comes up before the old one is gone, as swarm's replacement may: it cannot
        # be given the old one's address, so a client that kept the old answer finds nobody
        start("b", ["python3", "-c", HUB, "B"], alias="the-hub")
        first.remove(force=True)
        try:
            wait_for(lambda: "B" in answers(client), 60, "the server following the hub's name to its new address")
        except AssertionError as e:
            raise AssertionError(f"{e}; it saw {answers(client)[-10:]}") from None
    finally:
        for container in made:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        net.remove()
