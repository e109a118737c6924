"""The errors users see: what happened and what to do, with a reason from a fixed vocabulary.

The ``reason`` is also the label JupyterHub puts on its spawn-failure metrics, so it must
stay one of :data:`REASONS`.
"""

from __future__ import annotations

from jupyterhub.spawner import SpawnException

from gpuhub_spawner.hub import metrics

#: reason -> HTTP status.  Capacity problems are 503 (try again), policy problems 400/403.
REASONS: dict[str, int] = {
    "gpu-unavailable": 503,
    "bad-profile": 400,
    "forbidden-profile": 400,
    "quota-exceeded": 403,
    "engine-unavailable": 503,
    "image-missing": 503,
    "config-error": 500,
}


def spawn_error(message: str, reason: str, log_message: str | None = None) -> SpawnException:
    """Build the SpawnException for ``reason`` (counted in ``gpuhub_spawn_refusals_total``);
    raise it at the call site."""
    if reason not in REASONS:
        raise ValueError(f"unknown spawn failure reason {reason!r}")
    error = SpawnException(
        message,
        reason=reason,
        status_code=REASONS[reason],
        log_message=log_message or message,
    )
    # JupyterHub 6.1 words the progress stream's failure from ``str(error)``, which is the log
    # message behind "503 SpawnException(reason=…)": say the user's message there too.
    error.jupyterhub_message = message
    metrics.count_refusal(reason)
    return error
