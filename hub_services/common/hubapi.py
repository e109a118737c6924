"""A small client for the hub's REST API: timeouts, quoted path segments, pagination."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger(__name__)
PAGINATION = "application/jupyterhub-pagination+json"


class HubAPIError(Exception):
    """The hub refused or could not be reached; ``status`` is the hub's HTTP status (502 if none)."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


def seg(value: str) -> str:
    """One URL path segment, quoted."""
    return quote(value, safe="")


class HubClient:
    def __init__(self, api_url: str, token: str, timeout: float = 20.0):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = AsyncHTTPClient()

    async def request(
        self, method: str, path: str, body: Any = None, accept: str = "application/json"
    ) -> Any:
        headers = {"Authorization": f"token {self.token}", "Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT", "PATCH"):
            data = ""
        req = HTTPRequest(
            self.api_url + path,
            method=method,
            headers=headers,
            body=data,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            resp = await self.http.fetch(req)
        except HTTPClientError as e:
            message = _hub_message(e)
            log.warning("Hub API %s %s failed: %s %s", method, path, e.code, message)
            raise HubAPIError(e.code if e.code != 599 else 502, message) from None
        except OSError as e:
            log.warning("Hub API %s %s unreachable: %s", method, path, e)
            raise HubAPIError(502, "the hub's API could not be reached") from None
        if not resp.body:
            return None
        return json.loads(resp.body)

    async def paginate(self, path: str) -> list[Any]:
        """Every item of a list endpoint, following ``_pagination`` when the hub pages."""
        items: list[Any] = []
        offset = 0
        while True:
            sep = "&" if "?" in path else "?"
            page = await self.request("GET", f"{path}{sep}{urlencode({'offset': offset})}", accept=PAGINATION)
            if isinstance(page, list):  # a hub that does not page
                return items + page
            items.extend(page.get("items", []))
            nxt = (page.get("_pagination") or {}).get("next")
            if not nxt:
                return items
            offset = int(nxt["offset"])

    async def users(self) -> list[dict[str, Any]]:
        return await self.paginate("/users")

    async def user(self, name: str) -> dict[str, Any]:
        return await self.request("GET", f"/users/{seg(name)}")

    async def groups(self) -> list[dict[str, Any]]:
        return await self.paginate("/groups")

    async def group(self, name: str) -> dict[str, Any]:
        return await self.request("GET", f"/groups/{seg(name)}")


def _hub_message(e: HTTPClientError) -> str:
    try:
        return str(json.loads(e.response.body)["message"])[:200]  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError, KeyError):
        return "the hub could not be reached" if e.code == 599 else f"hub API error {e.code}"
