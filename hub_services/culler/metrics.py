"""Prometheus metrics of the culler, in their own registry (served at ``<prefix>metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hub_services.culler.decide import CULL_REASONS, KEEP_REASONS

ERROR_STAGES = ("hub-api", "server", "agent", "docker", "notice", "database", "internal")


class CullerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "gpuhub_culler_decisions_total",
            "Decisions about running servers, by action and reason",
            ["action", "reason"],
            registry=self.registry,
        )
        self.culls = Counter(
            "gpuhub_culler_culls_total", "Servers stopped by the culler, by reason", ["reason"], registry=self.registry
        )
        self.warnings = Counter(
            "gpuhub_culler_warnings_total", "Cull warnings given (first notice), by reason", ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "gpuhub_culler_errors_total", "Failures during passes, by stage", ["stage"], registry=self.registry
        )
        self.passes = Counter(
            "gpuhub_culler_passes_total", "Culler passes, by outcome", ["outcome"], registry=self.registry
        )
        self.duration = Histogram(
            "gpuhub_culler_pass_duration_seconds",
            "Time one pass over every running server takes",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.servers = Gauge(
            "gpuhub_culler_servers_checked", "Running servers looked at by the last pass", registry=self.registry
        )
        self.agents_down = Gauge(
            "gpuhub_culler_gpu_agents_unreachable", "GPU node agents that did not answer in the last pass",
            registry=self.registry,
        )
        # known label values up front, so every series exists from the first scrape
        for reason in KEEP_REASONS:
            self.decisions.labels("keep", reason)
        for reason in CULL_REASONS:
            self.decisions.labels("warn", reason)
            self.decisions.labels("cull", reason)
            self.culls.labels(reason)
            self.warnings.labels(reason)
        self.decisions.labels("cancel", "activity")
        for stage in ERROR_STAGES:
            self.errors.labels(stage)
        for outcome in ("ok", "failed"):
            self.passes.labels(outcome)
