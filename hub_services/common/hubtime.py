"""Times from the hub's REST API and from jupyter-server, shared by the services."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 timestamp ('…Z', '+00:00', or naive meaning UTC); None if empty."""
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()
