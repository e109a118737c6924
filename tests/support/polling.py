"""Bounded polling for tests: wait until a check holds, or fail saying what did not happen."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """``predicate()``'s first true value within ``timeout`` seconds; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout}s: {what}")
