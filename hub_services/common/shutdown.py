"""Stop a hub service promptly on SIGINT or SIGTERM, whatever signal dispositions it inherited.

JupyterHub stops a managed service with SIGINT, waits 30 s, then SIGTERM, waits 30 s more, then
SIGKILL, one service after another.  Python turns SIGINT into ``KeyboardInterrupt`` only when
the process started with SIGINT at its default; a hub started in the background of a shell
script (``deploy/gpuhub-up &``, ``nohup``) passes SIGINT on as *ignored*, so a service that
relied on ``KeyboardInterrupt`` sat out both waits: about a minute per hub stop, long enough for
the hub's periodic service health check to run on a half-stopped service and log a traceback.
Installing handlers explicitly works in every case.  After the first signal the defaults come
back, so a second one ends the process at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop_signal(loop: asyncio.AbstractEventLoop, name: str, stop: Callable[[], Any]) -> None:
    """Call ``stop()`` on ``loop`` at the first SIGINT or SIGTERM (main thread only)."""

    def handle(signum: int) -> None:
        log.info("%s stopping (%s)", name, signal.Signals(signum).name)
        for sig in SIGNALS:  # a second signal ends the process at once
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)
        stop()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, handle, sig)


async def run_until_stopped(main: Awaitable[Any], name: str) -> None:
    """Run ``main`` until it returns or SIGINT/SIGTERM arrives; then cancel it and return."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    signalled = []

    def stop() -> None:
        signalled.append(True)
        task.cancel()

    on_stop_signal(loop, name, stop)
    try:
        await task
    except asyncio.CancelledError:
        if not signalled:
            raise  # cancelled from outside, not by a signal
