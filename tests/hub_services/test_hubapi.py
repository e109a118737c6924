"""The services' one Hub API client against a real HTTP server that records what it receives:
quoted path segments, the token, JupyterHub 6 pagination, a bound on requests in flight shared
by every token, a timeout on every request, and one error class with the hub's own words.

(The four services' tests run it against a real JupyterHub; here the server is a small tornado
app so that concurrency and timeouts can be measured.)"""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from hub_services.common.hubapi import PAGINATION, BoundedHTTP, HubAPIError, HubClient

USERS = [{"name": f"u{i:03d}", "servers": {}} for i in range(7)]


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, str]] = []  # method, raw path, token, accept
        self.in_flight = 0
        self.most_in_flight = 0


def make_app(rec: Recorder) -> web.Application:
    class Any(web.RequestHandler):
        async def prepare(self) -> None:
            r = self.request
            rec.requests.append((r.method, r.path, r.headers.get("Authorization", ""), r.headers.get("Accept", "")))

    class Users(Any):
        def get(self) -> None:
            offset, limit = int(self.get_argument("offset", "0")), int(self.get_argument("limit", "200"))
            if self.request.headers.get("Accept") != PAGINATION:
                self.finish(json.dumps(USERS))  # an old hub: one plain list
                return
            items = USERS[offset : offset + min(limit, 3)]  # this hub pages by 3 at most
            nxt = {"offset": offset + len(items)} if offset + len(items) < len(USERS) else None
            self.finish({"items": items, "_pagination": {"offset": offset, "limit": limit, "next": nxt}})

    class User(Any):
        async def get(self, name: str) -> None:
            rec.in_flight += 1
            rec.most_in_flight = max(rec.most_in_flight, rec.in_flight)
            await asyncio.sleep(0.05)
            rec.in_flight -= 1
            if name == "nobody":
                self.set_status(404)
                self.finish({"status": 404, "message": "No such user: nobody"})
                return
            self.finish({"name": name, "servers": {"": {}, "gpu": {}}})

    class Slow(Any):
        async def get(self) -> None:
            await asyncio.sleep(5)

    class Server(Any):
        def delete(self, user: str, server: str = "") -> None:
            self.set_status(202 if server else 204)

    return web.Application(
        [
            (r"/hub/api/users", Users),
            (r"/hub/api/users/([^/]+)", User),
            (r"/hub/api/users/([^/]+)/server", Server),
            (r"/hub/api/users/([^/]+)/servers/([^/]+)", Server),
            (r"/hub/api/slow", Slow),
        ]
    )


@pytest.fixture
async def hub():
    sock, port = bind_unused_port()
    rec = Recorder()
    server = HTTPServer(make_app(rec))
    server.add_sockets([sock])
    rec.url = f"http://127.0.0.1:{port}/hub/api"
    yield rec
    server.stop()


async def test_every_path_segment_is_quoted_and_the_token_sent(hub):
    client = HubClient(hub.url, "svc-token")
    assert await client.running_servers("a/../b?x#y") == {"", "gpu"}
    assert await client.stop_server("ann", "my/server") == 202
    assert await client.stop_server("ann") == 204
    paths = [(m, p) for m, p, _, _ in hub.requests]
    assert paths == [
        ("GET", "/hub/api/users/a%2F..%2Fb%3Fx%23y"),
        ("DELETE", "/hub/api/users/ann/servers/my%2Fserver"),
        ("DELETE", "/hub/api/users/ann/server"),
    ]
    assert {token for _, _, token, _ in hub.requests} == {"token svc-token"}


async def test_pages_follow_the_hubs_pagination(hub):
    client = HubClient(hub.url, "t", page_size=2)
    pages = [[u["name"] for u in page] async for page in client.pages("/users", state="active")]
    assert pages == [["u000", "u001"], ["u002", "u003"], ["u004", "u005"], ["u006"]]
    assert all(accept == PAGINATION for _, _, _, accept in hub.requests)
    assert [u["name"] for u in await HubClient(hub.url, "t").users()] == [u["name"] for u in USERS]


async def test_requests_in_flight_are_bounded_across_tokens(hub):
    client = HubClient(hub.url, "svc", concurrency=3)
    admin = client.with_token("admin")  # e.g. the admin service acting as a signed-in admin
    names = [f"n{i}" for i in range(12)]
    await asyncio.gather(*(c.user(n) for n in names for c in (client, admin)))
    assert hub.most_in_flight == 3  # bounded, and really parallel
    assert {token for _, _, token, _ in hub.requests} == {"token svc", "token admin"}


async def test_errors_are_one_class_with_the_hubs_words(hub):
    client = HubClient(hub.url, "t", timeout=0.5)
    with pytest.raises(HubAPIError) as refused:
        await client.user("nobody")
    assert refused.value.status == 404 and refused.value.message == "No such user: nobody"
    assert str(refused.value) == "GET /users/nobody: No such user: nobody (404)"
    assert await client.running_servers("nobody") == set()  # no such user: runs nothing

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(HubAPIError) as slow:
        await client.request("GET", "/slow")
    assert slow.value.status == 502 and loop.time() - started < 3  # the timeout, not the 5 s answer

    with pytest.raises(HubAPIError) as down:
        await HubClient("http://127.0.0.1:9/hub/api", "secret-token", timeout=2).groups()
    assert down.value.status == 502 and "could not be reached" in down.value.message
    assert "secret-token" not in str(down.value) and "offset" not in str(down.value)  # no query string


async def test_bounded_http_reads_other_json_endpoints_within_the_same_bound(hub):
    http = BoundedHTTP(concurrency=1, timeout=5)
    code, body = await http.fetch(hub.url + "/users/ann", token="agent-token")
    assert code == 200 and body["name"] == "ann"
    assert hub.requests[-1][2] == "token agent-token"
