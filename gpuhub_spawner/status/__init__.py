"""``gpuhub status``: the operator's one look at a running hub (services, nodes, pools, queue).

:mod:`report` holds the pure logic and the text form, :mod:`collect` reads the Hub API and the
Docker API.  The command lives here so that ``cli.py`` only wires it in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gpuhub_spawner.status import collect, report

TOKEN_HELP = (
    "file holding a Hub API token: a hub admin's, or a service token whose role has list:users, "
    "read:users, read:servers, list:services, read:services and read:metrics "
    "(default: $GPUHUB_STATUS_TOKEN_FILE)"
)


def _settings(args: argparse.Namespace) -> tuple[str, str, str, str | None]:
    """(hub URL, Docker host, stack name, exporter prefix) from the flags, else gpuhub.yaml."""
    hub_url, docker_host, stack, exporter = args.hub_url, args.docker_host, args.stack, None
    if args.config:
        from gpuhub_spawner.core.config import check_file

        cfg = check_file(args.config)  # ConfigFileError: cmd_status prints its lines
        deploy = getattr(cfg, "deploy", None)
        hub_url = hub_url or (deploy.public_url if deploy else cfg.hub.bind_url)
        docker_host = docker_host or cfg.hub.docker_host
        stack = stack or (deploy.stack_name if deploy else "")
        exporter = "/services/gpuhub-exporter/" if cfg.metrics.exporter_port else None
    return (hub_url or "http://127.0.0.1:8000", docker_host or os.environ.get("DOCKER_HOST", ""),
            stack or "gpuhub", exporter if args.exporter is None else (args.exporter or None))


def _docker(docker_host: str) -> Any | None:
    import docker

    from gpuhub_spawner.core.dockerhost import DockerHostError, client_kwargs

    try:
        return docker.DockerClient(timeout=20, **client_kwargs(docker_host, os.environ, "--docker-host"))
    except (DockerHostError, docker.errors.DockerException):
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from gpuhub_spawner.core.config import ConfigFileError

    try:
        hub_url, docker_host, stack, exporter = _settings(args)
    except ConfigFileError as e:
        print("\n".join(f"gpuhub status: {line}" for line in e.lines), file=sys.stderr)
        return 2
    token_file = args.token_file or os.environ.get("GPUHUB_STATUS_TOKEN_FILE", "")
    if not token_file:
        print("gpuhub status: give --token-file FILE (" + TOKEN_HELP + ")", file=sys.stderr)
        return 2
    with open(token_file) as f:
        token = f.read().strip()
    client = None if args.no_docker else _docker(docker_host)
    result = collect.collect(collect.HubReader(hub_url, token), client, stack, exporter)
    if client is None and not args.no_docker:
        result.problems.append("the Docker engine: not reachable (run on the manager, or set DOCKER_HOST)")
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(report.format_text(result))
    return 0 if result.healthy else 1


def add_status_command(sub: Any) -> None:
    p = sub.add_parser("status", help="services, nodes, pools and the queue of a running hub",
                       description="Services, nodes, pools and the queue of a running hub. Exit 0 when "
                       "everything answers, 1 when something does not (it is listed), 2 on a usage error.")
    p.add_argument("--config", help="gpuhub.yaml: the hub's URL, Docker host and stack name from it")
    p.add_argument("--hub-url", help="the hub's public URL (default: deploy.public_url, else hub.bind_url)")
    p.add_argument("--token-file", help=TOKEN_HELP)
    p.add_argument("--docker-host", help="the engine the hub uses (default: DOCKER_HOST, else the local socket)")
    p.add_argument("--stack", help="the stack's name (default: deploy.stack_name, else gpuhub)")
    p.add_argument("--exporter", help="the hub exporter's prefix, for pools on one host "
                   "(default: /services/gpuhub-exporter/ when metrics.exporter_port is set; '' for none)")
    p.add_argument("--no-docker", action="store_true", help="read the hub only, not the Docker engine")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_status)
