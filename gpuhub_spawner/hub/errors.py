"""The errors users see: what happened and what to do, with a reason from a fixed vocabulary.

The ``reason`` is also the label JupyterHub puts on its spawn-failure metrics, so it must
stay one of :data:`REASONS`.
"""

from __future__ import annotations

import logging

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
    error.gpuhub_reason = reason
    metrics.count_refusal(reason)
    return error


class _RefusalsWithoutTraceback(logging.Filter):
    """JupyterHub logs every exception of ``apply_user_options`` with its traceback, even the
    HTTPError it passes on as the answer.  A refusal built by :func:`spawn_error` is not a fault
    of the code: its line stays (as a warning), its traceback goes (its log message says all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if getattr(error, "gpuhub_reason", None):
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg}: %s"
            record.args = (*(record.args or ()), error.log_message)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_refusal_tracebacks(log: logging.Logger) -> None:
    """Install :class:`_RefusalsWithoutTraceback` on ``log`` (the hub's logger), once."""
    if not any(isinstance(f, _RefusalsWithoutTraceback) for f in log.filters):
        log.addFilter(_RefusalsWithoutTraceback())
