"""The one client of the hub's REST API, used by all four services.

Every request has a timeout (connect and total) and waits on one semaphore, so a service
runs many requests at once but never more than ``concurrency``; the client is a tornado
instance of its own, sized to that semaphore (the loop's shared one allows 10 at once).
Every path segment built from a name goes through :func:`seg` (``urllib.parse.quote`` with
nothing safe), so a user called ``a/b`` or ``..`` cannot reach another endpoint.  List
endpoints are read page by page as JupyterHub 6 pages them (``offset``/``limit`` with
``Accept: application/jupyterhub-pagination+json``, following ``_pagination.next``); a hub
that does not page answers a plain list, which is taken whole.

Whatever goes wrong (the hub refuses, is down, times out, answers garbage) is one
:class:`HubAPIError` whose ``status`` and ``message`` say what happened, without tokens or
query strings.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger(__name__)
JSON = "application/json"
PAGINATION = "application/jupyterhub-pagination+json"


class HubAPIError(Exception):
    """A request failed: ``status`` is the HTTP status (502 when there was no answer),
    ``message`` the hub's own words when it gave some; ``str()`` adds the method and path."""

    def __init__(self, status: int, message: str, method: str = "", path: str = ""):
        self.status = status
        self.message = message
        self.method = method
        self.path = path.split("?", 1)[0]
        where = f"{method} {self.path}: " if method else ""
        super().__init__(f"{where}{message} ({status})")


def seg(value: str) -> str:
    """One URL path segment, quoted (``/`` too)."""
    return quote(value, safe="")


class BoundedHTTP:
    """tornado's HTTP client behind one semaphore, JSON in and out, a timeout on every request.

    Shared by a service's hub client, the clients acting with another token
    (:meth:`HubClient.with_token`) and, in the culler, the node-agent reads and kernel probes,
    so ``concurrency`` bounds all of them together.
    """

    def __init__(self, concurrency: int = 10, timeout: float = 20.0):
        self.concurrency = max(1, concurrency)
        self.semaphore = asyncio.Semaphore(self.concurrency)
        self.timeout = timeout
        self._client: AsyncHTTPClient | None = None

    @property
    def client(self) -> AsyncHTTPClient:
        if self._client is None:  # made on first use, on the loop that uses it
            self._client = AsyncHTTPClient(force_instance=True, max_clients=max(10, self.concurrency))
        return self._client

    async def fetch(
        self, url: str, method: str = "GET", token: str = "", accept: str = JSON, body: Any = None
    ) -> tuple[int, Any]:
        """``(status, decoded JSON or None)``; :class:`HubAPIError` (502) when nothing answered."""
        headers = {"Accept": accept}
        if token:
            headers["Authorization"] = f"token {token}"
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = JSON
        elif method in ("POST", "PUT", "PATCH"):
            data = ""
        request = HTTPRequest(
            url, method=method, headers=headers, body=data, allow_nonstandard_methods=True,
            connect_timeout=self.timeout, request_timeout=self.timeout, follow_redirects=False,
        )
        path = url.split("?", 1)[0]
        async with self.semaphore:
            try:  # raise_error=False still raises for timeouts and lost connections (599)
                response = await self.client.fetch(request, raise_error=False)
            except HTTPClientError as e:
                raise HubAPIError(502, f"no answer: {e.message}", method, path) from None
            except OSError as e:
                raise HubAPIError(502, f"could not be reached: {e.strerror or e}", method, path) from None
        if response.code == 599:
            raise HubAPIError(502, f"no answer: {response.error}", method, path)
        if not response.body:
            return response.code, None
        try:
            return response.code, json.loads(response.body)
        except ValueError:
            return response.code, None


class HubClient:
    """The hub's REST API with one service's token (or, :meth:`with_token`, another's)."""

    def __init__(
        self,
        api_url: str,
        token: str,
        timeout: float = 20.0,
        concurrency: int = 10,
        page_size: int = 200,
        http: BoundedHTTP | None = None,
    ):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.page_size = page_size
        self.http = http or BoundedHTTP(concurrency, timeout)

    @property
    def timeout(self) -> float:
        return self.http.timeout

    def with_token(self, token: str) -> HubClient:
        """The same hub, another token (e.g. a signed-in admin's), within the same bounds."""
        return HubClient(self.api_url, token, page_size=self.page_size, http=self.http)

    async def call(self, method: str, path: str, body: Any = None, accept: str = JSON) -> tuple[int, Any]:
        """``(status, body)`` of a 2xx answer; :class:`HubAPIError` for anything else."""
        code, data = await self.http.fetch(self.api_url + path, method, self.token, accept, body)
        if not 200 <= code < 300:
            message = _hub_message(data, code)
            log.warning("Hub API %s %s failed: %s %s", method, path.split("?", 1)[0], code, message)
            raise HubAPIError(code, message, method, path)
        return code, data

    async def request(self, method: str, path: str, body: Any = None, accept: str = JSON) -> Any:
        """The decoded body of a 2xx answer (None when empty)."""
        return (await self.call(method, path, body, accept))[1]

    async def pages(self, path: str, **query: Any) -> AsyncIterator[list[dict[str, Any]]]:
        """The items of a list endpoint, one page at a time, as they arrive."""
        offset = 0
        while True:
            params = urlencode({**query, "offset": offset, "limit": self.page_size})
            page = await self.request("GET", f"{path}?{params}", accept=PAGINATION)
            if isinstance(page, list):  # a hub that does not page
                yield page
                return
            yield list((page or {}).get("items") or [])
            nxt = ((page or {}).get("_pagination") or {}).get("next")
            if not nxt:
                return
            offset = int(nxt["offset"])

    async def paginate(self, path: str, **query: Any) -> list[dict[str, Any]]:
        """Every item of a list endpoint."""
        return [item async for page in self.pages(path, **query) for item in page]

    async def users(self, **query: Any) -> list[dict[str, Any]]:
        """Every user (``state="active"``: those with a running or pending server)."""
        return await self.paginate("/users", **query)

    async def user(self, name: str) -> dict[str, Any]:
        return await self.request("GET", f"/users/{seg(name)}")

    async def groups(self) -> list[dict[str, Any]]:
        return await self.paginate("/groups")

    async def group(self, name: str) -> dict[str, Any]:
        return await self.request("GET", f"/groups/{seg(name)}")

    async def group_properties(self, name: str) -> dict[str, Any]:
        return dict((await self.group(name)).get("properties") or {})

    async def running_servers(self, user: str) -> set[str]:
        """Names of the user's running or pending servers ("" is the default); none if no such user."""
        try:
            model = await self.user(user)
        except HubAPIError as e:
            if e.status == 404:
                return set()
            raise
        if not isinstance(model, dict):
            raise HubAPIError(502, "the hub answered no user model", "GET", "/users/{name}")
        return {str(name) for name in (model.get("servers") or {})}

    async def stop_server(self, user: str, server: str = "") -> int:
        """Ask the hub to stop a server: 204 (stopped) or 202 (still stopping)."""
        path = f"/users/{seg(user)}/servers/{seg(server)}" if server else f"/users/{seg(user)}/server"
        code, _ = await self.call("DELETE", path)
        return code


def _hub_message(data: Any, code: int) -> str:
    """The hub's own ``message`` (cut to 200 characters), else a generic line."""
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])[:200]
    return f"the hub answered {code}"
