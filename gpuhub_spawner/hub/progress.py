"""What a user sees while a server starts: the progress stream and the notices on the hub's pages.

The progress stream (``Spawner.progress``) says the real steps of this spawn, as they happen:
reserving, place in line, the unit assigned, starting.  The notice table (in the usage
database) remembers a start until it ends, so a start that a hub crash cut off is told to its
user on the hub's pages when the hub is back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from typing import Any

#: seconds between the "still getting the image" lines while a node pulls a server's image
PULL_NOTE_EVERY = 30.0


def pulling_message(image: str, node: str) -> str:
    """What a user is told when a swarm node starts preparing their server (it pulls the image
    there when it lacks it: once per node, unless ``gpuhub node prepull`` did it before)."""
    return (f"Getting the image {image} onto node {node} if it is not there yet: this happens once "
            "per node, and a large image takes minutes…")


#: this hub process, in the notice table: a "starting" row of another process is a start a crash cut off
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SpawnProgress:
    """Progress events and notices of one spawner (mixed into ``GPUSpawnerMixin``).

    Uses the spawner's ``usage_db_url``, ``usage_ledger``, ``hub_state``, ``user`` and ``name``.
    """

    def _progress_init(self) -> None:
        self._progress_events: list[dict[str, Any]] = []
        self._progress_changed = asyncio.Event()
        # a new start answers an old notice; until it ends, a hub crash leaves this row to say so
        self._notice_in_background("mark_starting", PROCESS_ID)

    def _start_finished(self) -> None:
        """The start ended (ready or failed, either way the user was told): no notice left."""
        self._notice_in_background("clear_notice")

    # ---- notices on the hub's pages ---------------------------------------------------

    #: what a user is told when the hub, starting again, finds their start cut off
    STOPPED_WHILE_DOWN = (
        "The start of your server '{server}' was cut off when the hub restarted. Your files are "
        "kept: start it again from the home page."
    )

    def _seen_running(self) -> None:
        """poll() found the server running (e.g. adopted after a crash): a notice that its start
        was cut off is old news.  Once per spawner object, so polls do not write each time."""
        if not getattr(self, "_notice_answered", False):
            self._notice_answered = True
            self._notice_in_background("clear_notice")

    def _notice_in_background(self, method: str, *args: str) -> None:
        """Write to the notice table in a thread: a slow database never holds a start or stop."""
        if not self.usage_db_url:
            return

        def write() -> None:
            try:
                getattr(self.usage_ledger, method)(self.user.name, self.name or "", *args)
            except Exception as e:  # noqa: BLE001 - a notice lost is logged, never fatal
                self.log.warning("Could not %s for %s: %s", method.replace("_", " "), self._log_name, e)

        try:
            asyncio.get_running_loop().run_in_executor(self.hub_state.notice_writer, write)  # in order
        except RuntimeError:  # no event loop (a unit test): nothing to tell
            pass

    def _still_pulling(self, image: str, node: str) -> None:
        """While the node still pulls: a line every :data:`PULL_NOTE_EVERY` seconds, never silence."""
        now = time.monotonic()
        started = self.__dict__.setdefault("_pull_started", now)
        said = self.__dict__.get("_pull_notes", 0)
        if now - started >= PULL_NOTE_EVERY * (said + 1):
            self._pull_notes = said + 1
            waited = int(now - started)
            self._emit(70, f"Still getting the image {image} onto node {node} ({waited // 60}m{waited % 60:02d}s so far)…")

    def _emit(self, progress: int, message: str) -> None:
        if not hasattr(self, "_progress_events"):
            self._progress_init()
        self._progress_events.append({"progress": progress, "message": message})
        self._progress_changed.set()

    async def progress(self):
        """Stream the real steps of this spawn: reserving, place in line, assignment, start."""
        if not hasattr(self, "_progress_events"):
            self._progress_init()
        sent = 0
        while True:
            events = self._progress_events
            while sent < len(events):
                yield events[sent]
                sent += 1
            self._progress_changed.clear()
            try:
                await asyncio.wait_for(self._progress_changed.wait(), 1)
            except TimeoutError:
                if not (self._spawn_pending or self._start_pending):
                    return
