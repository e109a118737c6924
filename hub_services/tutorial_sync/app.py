"""The tutorial-sync service: follow a branch, publish each commit to the shared store.

Runs as a hub-managed service (``c.JupyterHub.services``) and needs no hub API scopes at
all: it only serves its own pages under its prefix:

- ``GET  <prefix>``             status page (synced commit, time, last error); hub sign-in
- ``GET  <prefix>status.json``  the same as JSON; hub sign-in or a token
- ``POST <prefix>webhook``      GitHub push webhook: no sign-in, verified with ``X-Hub-Signature-256``
- ``GET  <prefix>metrics``      Prometheus metrics; a token with the ``read:metrics`` scope
- ``GET  <prefix>bundle``       the current version as a tar stream (``?have=<sha>``: 304 when it
                                is still current), for the per-node mirrors
                                (``gpuhub_spawner/node/tutorial_mirror.py``); a token with the
                                custom scope ``custom:gpuhub-tutorials:read``, which only the
                                ``tutorial-mirror`` service holds

Who may read the status: hub users and services holding ``access:services!service=<name>``,
JupyterHub's own scope for reaching a service (admins hold it; grant it to tutorial authors with
a role). It shows the repository URL, branch and errors, which attendees do not need.

The webhook body is capped (``max_webhook_kb``) before it is read; anything the endpoint
cannot use (bad signature, oversized, not UTF-8 JSON, nested too deeply) is a 4xx, never a 500.
Nothing it shows contains the repository token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import tarfile
import time
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from tornado import web
from traitlets import Float, Integer, TraitError, Unicode, default, validate

from hub_services.common.base import HubService, MetricsHandler, ServiceHandler
from hub_services.tutorial_sync.gitsource import GitSource, SyncError
from hub_services.tutorial_sync.publish import CommitLimits, current_version, publish

log = logging.getLogger(__name__)

#: the scope that lets a token read the bundle: a custom scope (jupyterhub_config.py defines it)
#: held only by the tutorial-mirror service, never by users or admins
BUNDLE_SCOPE = "custom:gpuhub-tutorials:read"


def utcnow() -> float:
    """Wall-clock seconds; a module-level function so tests can patch time."""
    return time.time()


@dataclass
class SyncStatus:
    """What the status page and JSON show."""

    repo: str
    branch: str
    commit: str | None = None
    published_at: float | None = None
    last_attempt_at: float | None = None
    last_error: str | None = None
    refused: list[dict[str, str]] = field(default_factory=list)
    files: int = 0
    trigger: str = ""


class SyncMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "gpuhub_tutorial_sync_runs_total", "Sync attempts by result", ["result"], registry=self.registry
        )
        for result in ("published", "unchanged", "error"):
            self.runs.labels(result)
        self.last_success = Gauge(
            "gpuhub_tutorial_sync_last_success_timestamp_seconds",
            "When the store last matched the branch",
            registry=self.registry,
        )
        self.duration = Histogram(
            "gpuhub_tutorial_sync_publish_duration_seconds", "Time to publish one commit", registry=self.registry
        )
        self.refused = Gauge(
            "gpuhub_tutorial_sync_refused_entries", "Entries of the last commit left out", registry=self.registry
        )


class Syncer:
    """Fetch + publish, one at a time, triggered by the poll timer or a webhook."""

    def __init__(
        self,
        source: GitSource,
        store: Path,
        max_file_bytes: int,
        keep: int,
        public_url: str,
        limits: CommitLimits | None = None,
    ):
        self.source = source
        self.store = store
        self.max_file_bytes = max_file_bytes
        self.keep = keep
        self.limits = limits or CommitLimits()
        self.status = SyncStatus(repo=public_url, branch=source.branch, commit=current_version(store))
        self.metrics = SyncMetrics()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    async def run_once(self, trigger: str) -> SyncStatus:
        async with self._lock:
            self.status.last_attempt_at = utcnow()
            self.status.trigger = trigger
            loop = asyncio.get_running_loop()
            try:
                sha = await loop.run_in_executor(None, self.source.fetch)
                if sha == current_version(self.store):
                    self.metrics.runs.labels("unchanged").inc()
                else:
                    t0 = time.perf_counter()
                    report = await loop.run_in_executor(
                        None,
                        lambda: publish(self.source, sha, self.store, self.max_file_bytes, self.keep, self.limits),
                    )
                    self.metrics.duration.observe(time.perf_counter() - t0)
                    self.metrics.runs.labels("published").inc()
                    self.status.published_at = utcnow()
                    self.status.files = report.files
                    self.status.refused = [{"path": p, "reason": r} for p, r in report.refused]
                    self.metrics.refused.set(len(report.refused))
                    log.info("Published %s (%d files, %d left out) after %s", sha[:12], report.files,
                             len(report.refused), trigger)
                self.status.commit = sha
                self.status.last_error = None
                self.metrics.last_success.set(utcnow())
            except SyncError as e:
                self.metrics.runs.labels("error").inc()
                self.status.last_error = str(e)
                log.warning("Sync failed (%s): %s", trigger, e)
            return self.status

    def trigger(self) -> None:
        self._wake.set()

    async def loop(self, interval: float) -> None:
        trigger = "start"
        while True:
            # clear before syncing: a webhook that arrives during this sync runs another one
            self._wake.clear()
            await self.run_once(trigger)
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
                trigger = "webhook"
            except TimeoutError:
                trigger = "poll"


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """GitHub's ``X-Hub-Signature-256: sha256=<hex>`` check, in constant time.

    Compared as bytes: a header with non-ASCII characters is simply wrong, not an error.
    """
    if not secret or not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    given = header[len("sha256="):].encode("utf-8", "surrogateescape")
    return hmac.compare_digest(expected, given)


def push_ref(body: bytes) -> str:
    """The ``ref`` of a push event body; :class:`ValueError` when it is not a UTF-8 JSON object.

    Only the top level is needed, but ``json`` parses everything: a body nested too deeply
    for the parser (RecursionError) is refused like any other malformed body.
    """
    try:
        event = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, RecursionError, ValueError):
        raise ValueError("the body is not UTF-8 JSON") from None
    if not isinstance(event, dict):
        raise ValueError("the body is not a JSON object")
    ref = event.get("ref", "")
    return ref if isinstance(ref, str) else ""


class _Base(ServiceHandler):
    @property
    def syncer(self) -> Syncer:
        return self.settings["syncer"]

    def write_error(self, status_code: int, **kwargs: object) -> None:
        """A short JSON error (``{"error": "..."}``), or a short page; never a traceback."""
        if getattr(self, "api", True):
            super().write_error(status_code, **kwargs)
            return
        message = self.error_message(status_code, kwargs.get("exc_info", (None, None, None))[1])  # type: ignore[index]
        self.finish(f"<!doctype html><title>Tutorial sync</title><h1>Error {status_code}</h1><p>{escape(message)}</p>")


class _SignedIn(HubOAuthenticated, _Base):
    """Hub users and services allowed to reach this service (``access:services!service=NAME``)."""

    api = True

    def prepare(self) -> None:
        if self.current_user is None:
            if self.api:
                raise web.HTTPError(403, "Sign in to the hub as an admin or a user allowed to see this service.")
            self.redirect(self.get_login_url())  # raises 403 for a signed-in user without access


class StatusPage(_SignedIn):
    api = False

    def get(self) -> None:
        s = self.syncer.status
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.published_at)) if s.published_at else "never"
        refused = "".join(f"<li><code>{escape(r['path'])}</code>: {escape(r['reason'])}</li>" for r in s.refused)
        self.write(
            "<!doctype html><title>Tutorial sync</title><h1>Tutorial sync</h1>"
            f"<p>Following <code>{escape(s.repo)}</code>, branch <code>{escape(s.branch)}</code>.</p>"
            f"<p>Published commit: <code>{escape(s.commit or 'none yet')}</code> ({escape(when)}), "
            f"{s.files} files.</p>"
            + (f"<p class='error'>Last error: {escape(s.last_error)}</p>" if s.last_error else "<p>No errors.</p>")
            + (f"<p>Left out of the last commit:</p><ul>{refused}</ul>" if refused else "")
        )


class Bundle(_Base):
    """The current version as an uncompressed tar, streamed as it is read (bounded memory)."""

    async def get(self) -> None:
        model = await self.token_model()
        if not model or BUNDLE_SCOPE not in (model.get("scopes") or []):
            raise web.HTTPError(403, f"The tutorial bundle needs a hub token with the '{BUNDLE_SCOPE}' scope "
                                     "(the tutorial-mirror service's).")
        sha = current_version(self.syncer.store)
        if sha is None:
            raise web.HTTPError(404, "Nothing is published yet.")
        self.set_header("X-Gpuhub-Commit", sha)
        if self.get_argument("have", "") == sha:
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", "application/x-tar")
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        loop = asyncio.get_running_loop()
        writer = loop.run_in_executor(None, write_tar, self.syncer.store / "versions" / sha, chunks)
        while (chunk := await loop.run_in_executor(None, chunks.get)) is not None:
            self.write(chunk)
            await self.flush()
        await writer
        self.finish()


def write_tar(root: Path, chunks: queue.Queue) -> None:
    """Put ``root``'s tree (symlinks as links, never followed) into ``chunks`` as a tar stream."""

    class Sink:
        def write(self, data: bytes) -> int:
            chunks.put(bytes(data))
            return len(data)

    try:
        with tarfile.open(fileobj=Sink(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for top, dirs, files in os.walk(root):  # never into a symlinked directory
                dirs.sort()
                for name in dirs + sorted(files):
                    path = Path(top, name)
                    tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    finally:
        chunks.put(None)


class StatusJSON(_SignedIn):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(asdict(self.syncer.status)))


@web.stream_request_body
class Webhook(_Base):
    """GitHub push webhooks: no sign-in, an HMAC signature; the body is capped as it arrives."""

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._cap = self.settings["max_webhook_bytes"]
        if not self.settings["webhook_secret"]:
            raise web.HTTPError(404, "webhooks are not enabled (no secret configured)")
        try:
            declared = int(self.request.headers.get("Content-Length") or 0)
        except ValueError:
            raise web.HTTPError(400, "bad Content-Length") from None
        if declared > self._cap:
            raise web.HTTPError(413, f"webhook bodies are limited to {self._cap} bytes")
        # a chunked body is cut off by the server (400) once it passes the cap
        self.request.connection.set_max_body_size(self._cap)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._cap:
            self._chunks.append(chunk)

    def post(self) -> None:
        body = b"".join(self._chunks)
        if self._size > self._cap:
            raise web.HTTPError(413, f"webhook bodies are limited to {self._cap} bytes")
        if not verify_signature(self.settings["webhook_secret"], body, self.request.headers.get("X-Hub-Signature-256")):
            log.warning("Rejected a webhook call with a missing or wrong signature from %s", self.request.remote_ip)
            raise web.HTTPError(401, "bad signature")
        event = self.request.headers.get("X-GitHub-Event", "")
        if event == "ping":
            self.write({"ok": True})
            return
        try:
            ref = push_ref(body)
        except ValueError as e:
            raise web.HTTPError(400, "%s", e) from None
        if event == "push" and ref == f"refs/heads/{self.syncer.source.branch}":
            self.syncer.trigger()
            self.set_status(202)
            self.write({"sync": "started"})
        else:
            self.set_status(200)
            self.write({"sync": "ignored", "reason": f"not a push to {self.syncer.source.branch}"})

    def check_xsrf_cookie(self) -> None:  # signed by HMAC instead
        return None


class TutorialSyncApp(HubService):
    """gpuhub-tutorial-sync: publish a Git branch to the shared tutorial store."""

    name = "gpuhub-tutorial-sync"
    default_port = 8765
    title = "Tutorial sync"
    repo_url = Unicode(config=True, help="Git URL of the tutorial repository (no credentials in it).")
    branch = Unicode("main", config=True, help="Branch to follow.")
    store = Unicode(config=True, help="The shared tutorial store directory (mounted into servers).")
    cache_dir = Unicode(config=True, help="Where the bare mirror lives (default: <store>/../.tutorial-cache).")
    poll_interval = Float(60, config=True, help="Seconds between polls; webhooks sync at once.")
    max_file_mb = Integer(100, config=True, help="Files larger than this are left out.")
    max_total_mb = Integer(
        10240,
        config=True,
        help="""Largest commit published, in MiB (all files together).

        A commit over it is not published at all: the previous one stays current and the status
        page says why. Example: ``c.TutorialSyncApp.max_total_mb = 2048``.""",
    )
    max_files = Integer(
        100_000,
        config=True,
        help="""Most files (and symlinks) a published commit may hold.

        A commit with more is not published; the status page says why.
        Example: ``c.TutorialSyncApp.max_files = 20000``.""",
    )
    max_webhook_kb = Integer(
        5120,
        config=True,
        help="""Largest webhook body accepted, in KiB (GitHub push events are usually a few KiB).

        Bigger bodies are refused with 413 before they are read; the next poll still syncs.
        Example: ``c.TutorialSyncApp.max_webhook_kb = 1024``.""",
    )
    fetch_timeout = Float(1800, config=True, help="Seconds one git fetch may take (a first fetch of a big repo).")
    keep = Integer(3, config=True, help="Published versions kept (readers may still use old ones).")
    token = Unicode(config=True, help="HTTPS token for a private repository (env GPUHUB_TUTORIALS_TOKEN).")
    ssh_key = Unicode(config=True, help="Deploy key file for an SSH repository.")
    webhook_secret = Unicode(config=True, help="GitHub webhook secret (env GPUHUB_WEBHOOK_SECRET).")

    aliases = {
        "repo": "TutorialSyncApp.repo_url",
        "branch": "TutorialSyncApp.branch",
        "store": "TutorialSyncApp.store",
        "poll-interval": "TutorialSyncApp.poll_interval",
        "max-file-mb": "TutorialSyncApp.max_file_mb",
        "max-total-mb": "TutorialSyncApp.max_total_mb",
        "max-files": "TutorialSyncApp.max_files",
        "max-webhook-kb": "TutorialSyncApp.max_webhook_kb",
        "keep": "TutorialSyncApp.keep",
        "fetch-timeout": "TutorialSyncApp.fetch_timeout",
    }

    @default("service_name")
    def _default_service_name(self) -> str:
        """The status needs ``access:services!service=<this name>``."""
        return "tutorial-sync"

    @validate("max_total_mb", "max_files", "max_webhook_kb", "max_file_mb")
    def _positive(self, proposal: dict) -> int:
        if proposal["value"] < 1:
            name = proposal["trait"].name
            raise TraitError(f"TutorialSyncApp.{name} must be at least 1, not {proposal['value']}; raise it.")
        return proposal["value"]

    @property
    def max_body_size(self) -> int:  # type: ignore[override]
        """No route takes a body bigger than a webhook: larger ones are refused (400) unread."""
        return self.max_webhook_kb * 1024

    def make_syncer(self) -> Syncer:
        if not self.repo_url or not self.store:
            raise SystemExit("gpuhub-tutorial-sync: set --repo and --store")
        store = Path(self.store)
        cache = Path(self.cache_dir) if self.cache_dir else store.parent / ".tutorial-cache"
        source = GitSource(
            self.repo_url,
            self.branch,
            cache,
            token=self.token or None,
            ssh_key=self.ssh_key or None,
            timeout=self.fetch_timeout,
        )
        limits = CommitLimits(self.max_total_mb * 1024 * 1024, self.max_files)
        return Syncer(source, store, self.max_file_mb * 1024 * 1024, self.keep, self.repo_url, limits)

    def make_web_app(self, syncer: Syncer) -> web.Application:
        p = self.url_prefix
        hub_auth = self.hub_auth(HubOAuth, access_scopes={f"access:services!service={self.service_name}"})
        return web.Application(
            [
                (p, StatusPage),
                (p + "status.json", StatusJSON),
                (p + "webhook", Webhook),
                (p + "metrics", MetricsHandler),
                (p + "bundle", Bundle),
                (p + "oauth_callback", HubOAuthCallbackHandler),
            ],
            syncer=syncer,
            webhook_secret=self.webhook_secret.encode(),
            max_webhook_bytes=self.max_webhook_kb * 1024,
            metrics_scope=self.metrics_scope,
            metrics_registry=syncer.metrics.registry,
            hub_auth=hub_auth,
            cookie_secret=secrets.token_bytes(32),
        )

    async def serve(self) -> None:
        syncer = self.make_syncer()
        self.listen(self.make_web_app(syncer))
        log.info("Tutorial sync for branch %s listening on %s%s", self.branch, self.service_url, self.prefix)
        await syncer.loop(self.poll_interval)


main = TutorialSyncApp.main
