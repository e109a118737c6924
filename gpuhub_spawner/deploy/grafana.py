"""Grafana in the stack, by its upstream image name (pure: no I/O).

Debian does not package Grafana and no image registry is reachable where gpuhub is built and
tested, so gpuhub builds no Grafana image: ``deploy.grafana_image`` in gpuhub.yaml names the
upstream one (e.g. ``grafana/grafana-oss:11.3.0``) and each manager pulls it when the stack is
deployed.  Empty (the default): no Grafana.  What gpuhub supplies is tested without Grafana: the
dashboards' every query is evaluated against a real Prometheus (tests/hub_services/
test_exporter_prometheus.py), and this service's document by tests/deploy.

Grafana is served by Caddy under ``<public_url>/grafana/`` (``GPUHUB_GRAFANA_UPSTREAM``), reads
the stack's Prometheus on the internal network, signs its admin in with a generated password (the
secret ``grafana_admin_password``, in the secrets directory), and allows no anonymous access and
no sign-up.  The provisioning files and dashboards of ``deploy/grafana/`` travel as swarm configs
named by a digest of their content (a changed dashboard is a new config).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PORT = 3000
SECRET = "grafana_admin_password"
#: swarm config name -> (file in the repository, path in the Grafana container)
FILES = {
    "grafana_datasource": ("deploy/grafana/provisioning/datasources/gpuhub.yaml",
                           "/etc/grafana/provisioning/datasources/gpuhub.yaml"),
    "grafana_dashboards": ("deploy/grafana/provisioning/dashboards/gpuhub.yaml",
                           "/etc/grafana/provisioning/dashboards/gpuhub.yaml"),
    "grafana_overview": ("deploy/grafana/dashboards/gpuhub-overview.json",
                         "/var/lib/grafana/dashboards/gpuhub/gpuhub-overview.json"),
    "grafana_user": ("deploy/grafana/dashboards/gpuhub-user.json",
                     "/var/lib/grafana/dashboards/gpuhub/gpuhub-user.json"),
}


def config_names(stack: str, versions: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    """The stack document's ``configs`` entries of the Grafana files (``versions``: name -> digest)."""
    return {name: {"external": True, "name": f"{stack}_{name}_{(versions or {}).get(name, '1')}"} for name in FILES}


def service(image: str, public_url: str, place: list[str], swarm: dict[str, Any]) -> dict[str, Any]:
    """The ``grafana`` service: on a manager beside Prometheus, reached only through Caddy."""
    return {
        "image": image,
        "environment": {
            "GF_SERVER_ROOT_URL": f"{public_url.rstrip('/')}/grafana/",
            "GF_SERVER_SERVE_FROM_SUB_PATH": "true",
            "GF_SECURITY_ADMIN_USER": "admin",
            "GF_SECURITY_ADMIN_PASSWORD__FILE": f"/run/secrets/{SECRET}",
            "GF_SECURITY_COOKIE_SECURE": "true",
            "GF_AUTH_ANONYMOUS_ENABLED": "false",
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        },
        "configs": [{"source": name, "target": target} for name, (_src, target) in FILES.items()],
        "secrets": [{"source": SECRET, "target": SECRET}],
        "volumes": ["grafana-data:/var/lib/grafana"],
        # internal only: Caddy and Prometheus are there; no user server, no published port
        "networks": ["internal"],
        "deploy": {**swarm, "placement": {"constraints": list(place)}},
    }
