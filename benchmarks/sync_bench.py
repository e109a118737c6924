"""Tutorial sync: push-to-published latency (poll, webhook) and a large publish against ``git clone``.

1. Poll: the real service (``python -m hub_services.tutorial_sync``) follows a bare repository
   served over HTTP by git's http-backend; per push, the time from push completion until
   ``<store>/current`` points at the new commit (checked every 10 ms).
2. Webhook: the same with a second service polling every 3600 s, and a signed GitHub push
   webhook sent after each push.
3. Large: a repository of about --size-mb of random data, ``git clone`` against a fresh
   ``GitSource.fetch()`` + ``publish()``, both over the same ``file://`` transport.
One JSON object on stdout (and to --out); progress on stderr. See benchmarks/README.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from hub_services.tutorial_sync.gitsource import GitSource, SyncError
from hub_services.tutorial_sync.publish import current_version, publish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from gitserver import GIT_ENV, WorkClone, make_bare, serve_http  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
SECRET = "bench-webhook-secret"
WEBHOOK_TARGET_S = 3.0
BIG_FILES = 200


def log(msg: str, *args: Any) -> None:
    print("[sync-bench] " + (msg % args if args else msg), file=sys.stderr, flush=True)


def git(*args: str, cwd: Path) -> str:
    """git with the test identity and no user config, and no time limit (big repositories)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # ru_maxrss is KiB on Linux


# -- 1 and 2: push-to-published latency with the real service ------------------------------------


def start_service(workdir: Path, url: str, interval: float) -> tuple[subprocess.Popen, Path, str]:
    store = workdir / "store"  # the service keeps its mirror beside it, in workdir/.tutorial-cache
    port = free_port()
    env = os.environ | {
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_SERVICE_PREFIX": "/",
        "GPUHUB_WEBHOOK_SECRET": SECRET,
    }
    argv = [sys.executable, "-m", "hub_services.tutorial_sync", "--repo", url, "--branch", "main",
            "--store", str(store), "--poll-interval", str(interval)]  # fmt: skip
    with open(workdir / "service.log", "wb") as logfile:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    return proc, store, f"http://127.0.0.1:{port}/"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def published_trigger(logfile: Path, sha: str) -> str | None:
    """What set off the publication of ``sha``, from the service's log line for it.

    (``status.json`` needs a hub sign-in, which this standalone service has no hub for.)
    """
    deadline = time.perf_counter() + 5
    while time.perf_counter() < deadline:
        for line in logfile.read_text(errors="replace").splitlines():
            if f"Published {sha[:12]}" in line:
                return line.rsplit(" after ", 1)[-1].strip()
        time.sleep(0.05)
    return None


def wait_published(store: Path, sha: str, timeout: float) -> bool:
    """Whether ``store/current`` came to point at ``sha`` in time (checked every 10 ms)."""
    deadline = time.perf_counter() + timeout
    while current_version(store) != sha:
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.01)
    return True


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def send_webhook(base: str, sha: str) -> int:
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature, "Content-Type": "application/json"}
    return http("POST", base + "webhook", body, headers)[0]


def latency_phase(mode: str, url: str, clone: WorkClone, workdir: Path, interval: float, pushes: int) -> dict:
    workdir.mkdir()
    first = _push(clone, f"start {mode}")
    proc, store, base = start_service(workdir, url, interval)
    result: dict[str, Any] = {"poll_interval_s": interval, "pushes": pushes}
    latencies: list[float] = []
    triggers, webhook_codes, missed = [], [], 0
    try:
        if not wait_published(store, first, 60):  # the service syncs once at start
            raise RuntimeError(f"{mode}: the service never published its first commit; see its log below")
        for i in range(pushes):
            # a push lands at a random point of the poll cycle, not right after the last sync
            time.sleep(random.uniform(0, interval if mode == "poll" else 1.0))
            sha = _push(clone, f"{mode} {i}")
            t0 = time.perf_counter()
            if mode == "webhook":
                webhook_codes.append(send_webhook(base, sha))
            if not wait_published(store, sha, 3 * interval + 60 if mode == "poll" else 60):
                missed += 1
                log("%s push %d: not published in time", mode, i)
                continue
            latencies.append(time.perf_counter() - t0)
            triggers.append(published_trigger(workdir / "service.log", sha))
            log("%s push %d: published after %.3f s (%s)", mode, i + 1, latencies[-1], triggers[-1])
    finally:
        stop(proc)
        lines = (workdir / "service.log").read_text(errors="replace").splitlines()
        if sys.exc_info()[0]:  # failing: show why
            log("service log:\n%s", "\n".join(lines[-30:]))
        result["service_warnings"] = [line for line in lines if line.startswith("[W") or "Traceback" in line]
    result |= {"p50_s": round(statistics.median(latencies), 3) if latencies else None,
               "max_s": round(max(latencies), 3) if latencies else None, "missed": missed,
               "samples_s": [round(x, 3) for x in latencies], "triggers": triggers}  # fmt: skip
    if mode == "poll":
        result["note"] = "pushes land at random points of the poll cycle: at most one interval + one sync"
    else:
        result |= {"webhook_http_status": webhook_codes, "target_s": WEBHOOK_TARGET_S,
                   "met": missed == 0 and bool(latencies) and max(latencies) <= WEBHOOK_TARGET_S}  # fmt: skip
    return result


def _push(clone: WorkClone, message: str) -> str:
    clone.write("CHANGES.md", f"{message} at {time.time()}\n")
    return clone.commit_and_push(message)


# -- 3: a large repository: publish against git clone ---------------------------------------------


def choose_size(tmp: Path, size_mb: int) -> tuple[int, str | None]:
    """The size to build: each step holds about 3x the repository on disk (source, copy, checkout)."""
    free = shutil.disk_usage(tmp).free
    if free >= 4 * size_mb * MiB + GiB:  # 5 GiB for the default 1 GiB
        return size_mb, None
    smaller = max(8, (free - GiB) // (4 * MiB))
    return smaller, f"only {free / GiB:.1f} GiB free in {tmp}: built {smaller} MiB, not {size_mb}"


def make_big_repo(tmp: Path, size_mb: int) -> Path:
    """A bare repository with BIG_FILES random files of size_mb in all, plus small text files."""
    bare, work = make_bare(tmp / "big.git"), tmp / "big-author"
    work.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=work)
    per_file = size_mb * MiB // BIG_FILES
    for i in range(BIG_FILES):
        path = work / "data" / f"part{i // 50}" / f"blob{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for left in range(per_file, 0, -MiB):
                f.write(os.urandom(min(MiB, left)))
    for i in range(20):
        (work / "notebooks").mkdir(exist_ok=True)
        (work / "notebooks" / f"lesson{i:02d}.py").write_text(f"# lesson {i}\nprint({i})\n" * 50)
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "-m", "big", cwd=work)
    # no delta search across random blobs: it finds nothing and only slows the setup
    git("-c", "pack.window=0", "push", "--quiet", str(bare), "HEAD:refs/heads/main", cwd=work)
    shutil.rmtree(work)
    return bare


def large_phase(tmp: Path, size_mb: int) -> dict[str, Any]:
    size, note = choose_size(tmp, size_mb)
    log("large: building a %d MiB repository (%d random files)", size, BIG_FILES)
    t0 = time.perf_counter()
    url = make_big_repo(tmp, size).as_uri()  # file://: git's pack protocol over a pipe, no hardlinks
    result: dict[str, Any] = {"size_mb_requested": size_mb, "size_mb": size, "note": note,
                              "setup_s": round(time.perf_counter() - t0, 1),
                              "transport": "file:// URL of a local bare repository, for both clone and publish"}  # fmt: skip
    log("large: git clone")
    os.sync()  # neither side pays for the dirty pages of an earlier step
    t0 = time.perf_counter()
    git("clone", "--quiet", url, str(tmp / "clone"), cwd=tmp)
    clone_s = time.perf_counter() - t0
    os.sync()  # publish syncs before it switches `current`; a clone does not
    clone_sync_s = time.perf_counter() - t0
    shutil.rmtree(tmp / "clone")
    rss_before, git_rss_clone = rss_mib(resource.RUSAGE_SELF), rss_mib(resource.RUSAGE_CHILDREN)
    source = GitSource(url, "main", tmp / "cache")
    log("large: GitSource.fetch() + publish()")
    os.sync()
    try:
        t0 = time.perf_counter()
        sha = source.fetch()
        fetch_s = time.perf_counter() - t0
        report = publish(source, sha, tmp / "store")
        total = time.perf_counter() - t0
    except SyncError as e:
        return result | {"clone_s": round(clone_s, 2), "error": str(e)}
    return result | {
        "files": report.files, "bytes": report.bytes, "refused": len(report.refused),
        "clone_s": round(clone_s, 2), "clone_plus_sync_s": round(clone_sync_s, 2),
        "fetch_s": round(fetch_s, 2), "publish_s": round(total - fetch_s, 2), "fetch_plus_publish_s": round(total, 2),
        "ratio_publish_clone": round(total / clone_s, 2),
        "ratio_publish_clone_plus_sync": round(total / clone_sync_s, 2),
        "bench_peak_rss_mib_before": rss_before, "bench_peak_rss_mib": rss_mib(resource.RUSAGE_SELF),
        # ru_maxrss of the largest child so far: git index-pack (clone or fetch) maps the whole pack
        "git_peak_rss_mib_after_clone": git_rss_clone, "git_peak_rss_mib_after_publish": rss_mib(resource.RUSAGE_CHILDREN),
    }  # fmt: skip


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the large repository (MiB)")
    parser.add_argument("--pushes", type=int, default=5, help="pushes per latency phase")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="poll interval of phase 1 (s)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    machine = {"nproc": os.cpu_count(), "git": git_version, "python": platform.python_version(),
               "platform": platform.platform()}  # fmt: skip
    result: dict[str, Any] = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
    tmp = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    try:
        bare = make_bare(tmp / "repos" / "tutorials.git")
        clone = WorkClone(bare, tmp / "author")
        clone.write("intro.py", "print('hello')\n")
        with serve_http(tmp / "repos") as base:
            url = f"{base}/tutorials.git"
            log("poll: service polling every %g s, %d pushes", args.poll_interval, args.pushes)
            result["poll"] = latency_phase("poll", url, clone, tmp / "poll", args.poll_interval, args.pushes)
            log("webhook: service polling every 3600 s, %d pushes, each followed by a webhook", args.pushes)
            result["webhook"] = latency_phase("webhook", url, clone, tmp / "webhook", 3600, args.pushes)
        result["large"] = large_phase(tmp, args.size_mb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
