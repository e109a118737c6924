"""Debian's Prometheus, started by a test with its own config, port and storage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import requests
import yaml
from harness import free_port
from needs import unavailable
from procs import stop_process

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SINGLE_HOST = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus-single-host.yml"


class PrometheusServer:
    """Scrapes ``scrape_configs`` every second; ``query`` runs PromQL, ``targets`` lists targets."""

    def __init__(
        self, workdir: Path, scrape_configs: list[dict], ready_timeout: float = 30, rule_files: list[str] = (),
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape_configs}
        if rule_files:
            config["rule_files"] = [str(f) for f in rule_files]
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "prometheus.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout
        while not self._ok("/-/ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"prometheus did not become ready:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.3)

    def _ok(self, path: str) -> bool:
        try:
            return requests.get(self.url + path, timeout=2).ok
        except requests.RequestException:
            return False

    def query(self, expr: str) -> list[dict]:
        body = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body.get("status") == "success", (expr, body)
        return body["data"]["result"]

    def targets(self) -> list[dict]:
        return requests.get(self.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def scrape_with_committed_job(workdir: Path, job_name: str, token_file: Path, port: int, expr: str) -> None:
    """The committed single-host scrape job ``job_name``, with Prometheus's token file, scrapes the
    hub on ``port``: waits until ``expr`` has a result and checks that the target is up."""
    if not os.path.exists(PROMETHEUS):
        unavailable("Debian's prometheus package is not installed")
    jobs = yaml.safe_load(SINGLE_HOST.read_text())["scrape_configs"]
    job = next(j for j in jobs if j["job_name"] == job_name)
    assert job["authorization"]["credentials_file"] == "/etc/gpuhub/prometheus-token"
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    prom = PrometheusServer(workdir, [job])
    try:
        deadline = time.monotonic() + 30
        while not prom.query(expr):
            assert time.monotonic() < deadline, prom.targets()
            time.sleep(0.5)
        assert [t["health"] for t in prom.targets()] == ["up"]
    finally:
        prom.stop()
