"""Fixtures of the node agent's tests."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest


@pytest.fixture
def serve_agent():
    """``serve_agent(agent, token, servers=None)``: the agent's real tornado application on a
    free loopback port, in its own thread (as the agent serves it); returns its base URL.
    Stopped after the test."""
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from gpuhub_spawner.node.agent import make_web_app
    from gpuhub_spawner.node.agent_servers import MAX_NOTICE

    loops = []

    def start(agent, token, servers=None):
        [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        loop = asyncio.new_event_loop()
        loops.append(loop)
        started = threading.Event()

        def run():
            asyncio.set_event_loop(loop)

            async def serve():
                HTTPServer(make_web_app(agent, token, servers), max_body_size=2 * MAX_NOTICE).add_sockets([sock])
                started.set()

            loop.run_until_complete(serve())
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert started.wait(10)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for loop in loops:
        loop.call_soon_threadsafe(loop.stop)
