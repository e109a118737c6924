"""The node agent's kernel probe and notice file, for the culler, on servers of THIS node.

On a swarm the culler runs beside the hub on a manager, and a user's server runs on a worker:
the manager's engine cannot exec in it.  The agent of the server's node does it for the
culler, with the same probe (:mod:`.kernel_probe`: the script asks the server with the server's
own token; neither the culler's nor the agent's token ever reaches the server)::

    POST   /api/servers/<container id>/probe    -> {"node", "user", "server", "output"}
    PUT    /api/servers/<container id>/notice   {"text": "...", "card": "{...}"}  -> {"written": true}
    DELETE /api/servers/<container id>/notice   -> {"removed": true}

Every request carries the agent's token (the agent's ``_Handler``).  Only containers on this
node's engine that carry gpuhub's server labels (of the agent's ``--hub-id`` when it has one)
and run are served: any other id is refused (400 not an id, 404 unknown, 403 not a gpuhub
server or another hub's, 409 not running), so the token cannot be used to run things in
arbitrary containers.  ``output`` is the user's (untrusted): at most
:data:`~.kernel_probe.MAX_OUTPUT` bytes, read within ``timeout`` seconds (504 after), a few
probes at a time (503 when all are busy that long); the culler parses and caps it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from gpuhub_spawner.core.labels import ServerLabels
from gpuhub_spawner.node import kernel_probe
from gpuhub_spawner.node.agent import _Handler

log = logging.getLogger(__name__)
#: a container id as Docker gives it (full or short hex); names are not accepted
CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")
#: bytes of a notice request's body at most
MAX_NOTICE = 64 * 1024


class Refused(Exception):
    """A request the agent will not serve: ``status`` and a message saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ServerExec:
    """Probes and notices in this node's gpuhub servers (``api``: a ``docker.APIClient``)."""

    def __init__(self, api: Any, hub_id: str = "", timeout: float = 15.0, concurrency: int = 4,
                 notice_path: str = kernel_probe.NOTICE_PATH):
        self.api = api
        self.hub_id = hub_id
        self.timeout = timeout
        self.notice_path = notice_path
        self.concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None

    def check(self, container_id: str) -> ServerLabels:
        """The server's labels, or :class:`Refused` (blocking: one inspect)."""
        import docker.errors

        if not CONTAINER_ID.match(container_id):
            raise Refused(400, "not a container id (12 to 64 lowercase hex characters)")
        try:
            attrs = self.api.inspect_container(container_id)
        except docker.errors.NotFound:
            raise Refused(404, "no such container on this node") from None
        labels = ServerLabels.from_labels((attrs.get("Config") or {}).get("Labels"))
        if not labels.is_server:
            raise Refused(403, "not a gpuhub user server: refused")
        if not labels.of_hub(self.hub_id):
            raise Refused(403, "a server of another hub: refused")
        if not (attrs.get("State") or {}).get("Running"):
            raise Refused(409, "the server's container is not running")
        return labels

    async def run(self, container_id: str, what: str, call: Any) -> tuple[ServerLabels, Any]:
        """``check`` then ``call(api, full id)`` in a thread, bounded by ``timeout`` and the slots."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        deadline = time.monotonic() + self.timeout
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except TimeoutError:
            raise Refused(503, f"every {what} slot is busy; try again later") from None
        try:
            labels = await loop.run_in_executor(None, self.check, container_id)
            left = max(0.1, deadline - time.monotonic())
            try:
                result = await asyncio.wait_for(loop.run_in_executor(None, call, self.api, container_id), left)
            except TimeoutError:
                raise Refused(504, f"the {what} took longer than {self.timeout:g} s") from None
            return labels, result
        finally:
            self._slots.release()


class _ServerHandler(_Handler):
    @property
    def servers(self) -> ServerExec:
        return self.settings["servers"]

    def refuse(self, e: Refused | Exception) -> None:
        status = e.status if isinstance(e, Refused) else 502
        message = str(e) if isinstance(e, Refused) else "the node's Docker engine failed"
        if not isinstance(e, Refused):
            log.warning("Server request failed: %s", e)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"node": self.agent.node, "error": message}))

    def answer(self, doc: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"node": self.agent.node, **doc}))


class ProbeHandler(_ServerHandler):
    async def post(self, container_id: str) -> None:
        deadline = time.monotonic() + self.servers.timeout

        def probe(api: Any, cid: str) -> bytes | None:
            return kernel_probe.run_probe(api, cid, deadline)

        try:
            labels, output = await self.servers.run(container_id, "kernel probe", probe)
        except Exception as e:  # noqa: BLE001 - Refused or the engine: an answer, never a 500
            self.refuse(e)
            return
        if output is None:
            self.refuse(Refused(502, "the probe failed in the container (no clean answer)"))
            return
        self.answer({"user": labels.user, "server": labels.server,
                     "output": output.decode("utf-8", "replace")})


class NoticeHandler(_ServerHandler):
    async def _do(self, container_id: str, verb: str, call: Any) -> None:
        try:
            _, ok = await self.servers.run(container_id, "notice", call)
        except Exception as e:  # noqa: BLE001 - Refused or the engine: an answer, never a 500
            self.refuse(e)
            return
        if not ok:
            self.refuse(Refused(502, f"the notice could not be {verb} in the container"))
            return
        self.answer({verb: True})

    async def put(self, container_id: str) -> None:
        text, card = None, None
        if len(self.request.body) <= MAX_NOTICE:
            try:
                doc = json.loads(self.request.body)
                text, card = doc["text"], doc.get("card", "")
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
        if not isinstance(text, str) or not isinstance(card, str):
            too_big = len(self.request.body) > MAX_NOTICE
            self.refuse(Refused(413, f"a notice is at most {MAX_NOTICE} bytes") if too_big
                        else Refused(400, 'send {"text": "...", "card": "<JSON, optional>"}'))
            return
        path = self.servers.notice_path
        await self._do(container_id, "written", lambda api, cid: kernel_probe.write_notice(api, cid, text, path, card))

    async def delete(self, container_id: str) -> None:
        path = self.servers.notice_path
        await self._do(container_id, "removed", lambda api, cid: kernel_probe.remove_notice(api, cid, path))


def routes() -> list[tuple[str, type]]:
    """The routes of :func:`.agent.make_web_app` for this module."""
    return [
        (r"/api/servers/([^/]{1,100})/probe", ProbeHandler),
        (r"/api/servers/([^/]{1,100})/notice", NoticeHandler),
    ]
