"""Which Docker API addresses gpuhub talks to: a unix socket, ssh, or TCP with mutual TLS.

The checks are pure; :class:`PinnedTLSConfig` is the TLS setting handed to docker-py.

A Docker API is root on its machine (and, on a swarm manager, on every node).  Users' servers
share the nodes' networks, so a TCP port without TLS client verification is open to every
attendee's terminal.  The hub, the exporter and ``gpuhub node …`` therefore refuse a TCP address
unless docker-py will verify the engine and present a client certificate: ``DOCKER_TLS_VERIFY``
set (non-empty) and ``DOCKER_CERT_PATH`` (default ``~/.docker``) holding ``ca.pem``,
``cert.pem`` and ``key.pem`` — what ``docker.from_env()`` and DockerSpawner read, and what
``deploy/swarm/make-tls.sh`` writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from docker.tls import TLSConfig

#: schemes that cross the network (docker-py reads tcp:// as http://, or https:// with TLS)
NETWORK_SCHEMES = ("tcp", "http", "https")
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")

FIX = (
    "Run the hub on a swarm manager with the engine's unix socket (leave it unset), or use mutual "
    "TLS: tcp://<manager>:2376 with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH=<a directory with "
    "ca.pem, cert.pem, key.pem> (deploy/swarm/make-tls.sh makes them; the engine needs "
    '"tlsverify": true). See README, "Swarm".'
)


class DockerHostError(ValueError):
    """The Docker API address would be reachable without mutual TLS."""


@dataclass(frozen=True)
class MutualTLS:
    """Files of a verified client connection, in ``docker.tls.TLSConfig``'s terms."""

    ca_cert: str
    client_cert: tuple[str, str]

    def client_tls(self):
        """The ``tls`` argument of ``docker.APIClient`` / ``DockerClient`` (DockerSpawner's
        ``client_kwargs["tls"]``): verifies the engine with ``ca_cert`` only."""
        return PinnedTLSConfig(client_cert=self.client_cert, ca_cert=self.ca_cert, verify=True)


class PinnedTLSConfig(TLSConfig):
    """docker-py's TLSConfig, but a REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment
    cannot replace the swarm's CA (requests lets them override a session's ``verify``)."""

    def configure_client(self, client) -> None:
        super().configure_client(client)
        client.trust_env = False


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def require_mutual_tls(
    url: str,
    environ: Mapping[str, str],
    setting: str,
    isfile: Callable[[str], bool] = os.path.isfile,
) -> MutualTLS | None:
    """``None`` for a local or ssh address; the TLS files for a TCP one; else DockerHostError.

    ``setting`` names where ``url`` came from (``GPUHUB_DOCKER_HOST``, ``--docker-host``…) for
    the message.  An empty ``url`` is the local socket.
    """
    if not url or scheme(url) not in NETWORK_SCHEMES:
        return None
    if not environ.get("DOCKER_TLS_VERIFY"):
        raise DockerHostError(
            f"{setting} is a Docker API over TCP, but DOCKER_TLS_VERIFY is not set: without mutual TLS "
            "every user's server could reach it and take over every node. " + FIX
        )
    cert_path = environ.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")
    missing = [name for name in TLS_FILES if not isfile(os.path.join(cert_path, name))]
    if missing:
        raise DockerHostError(
            f"{setting} needs mutual TLS, but DOCKER_CERT_PATH ({cert_path}) lacks "
            f"{', '.join(missing)}. " + FIX
        )
    return MutualTLS(
        ca_cert=os.path.join(cert_path, "ca.pem"),
        client_cert=(os.path.join(cert_path, "cert.pem"), os.path.join(cert_path, "key.pem")),
    )


def client_kwargs(url: str, environ: Mapping[str, str], setting: str) -> dict:
    """``docker.DockerClient`` keyword arguments for ``url`` (empty: the environment's engine),
    refusing a TCP address without mutual TLS."""
    if not url:
        url, setting = environ.get("DOCKER_HOST", ""), "DOCKER_HOST"
    tls = require_mutual_tls(url, environ, setting)
    kwargs: dict = {"base_url": url} if url else {}
    if tls is not None:
        kwargs["tls"] = tls.client_tls()
    return kwargs
