"""The ``deploy:`` and ``storage:`` sections of ``gpuhub.yaml``: how ``gpuhub deploy`` runs the
stack, and where users' volumes live (pure).

Kept apart from :mod:`gpuhub_spawner.core.config` (which holds it as ``GPUHubConfig.deploy``)
so that model stays small; the errors read like every other section's (key path, value, fix).
Secrets are never here: they live in ``secrets_dir`` on the manager and become swarm secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: a stack name docker accepts (it prefixes every service, network, volume and secret)
STACK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,29}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TLS(_Section):
    """HTTPS at Caddy: the operator's certificate, ACME, or Caddy's own CA (a trial)."""

    mode: Literal["files", "acme", "internal"]
    cert_file: str = ""  # files: the certificate chain (PEM) on the manager
    key_file: str = ""  # files: its private key (PEM) on the manager
    acme_email: str = ""  # acme: the contact address given to the CA

    @model_validator(mode="after")
    def _complete(self) -> TLS:
        from gpuhub_spawner.core.config import _KeyProblems

        problems = []
        if self.mode == "files":
            for key in ("cert_file", "key_file"):
                value = getattr(self, key)
                if not value.startswith("/"):
                    problems.append((key, f"{value!r} is not an absolute path: with mode 'files' give the PEM "
                                          "file on the manager, e.g. /etc/gpuhub/tls/fullchain.pem"))
        elif self.cert_file or self.key_file:
            problems.append(("cert_file", f"set, but mode is {self.mode!r}: write mode: files, or remove the files"))
        if self.mode == "acme" and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", self.acme_email):
            problems.append(("acme_email", f"{self.acme_email!r} is not an email address: ACME needs a contact "
                                           "address (or use mode: files with your own certificate)"))
        if problems:
            raise _KeyProblems(problems)
        return self


class Deploy(_Section):
    """The stack on a swarm manager (``gpuhub deploy``): hub, db, registry, caddy, prometheus."""

    public_url: str  # https://workshop.example.org: what attendees open
    tls: TLS  # required: how Caddy gets its certificate
    database: Literal["postgres", "sqlite"] = "postgres"  # sqlite: a one-machine trial only
    registry_port: int = Field(5000, ge=1, le=65535)  # published on the manager for the nodes' pulls
    secrets_dir: str = "/etc/gpuhub/secrets"  # on the manager, mode 0700; files 0600
    stack_name: str = "gpuhub"
    push_images: list[str] = []  # user images pushed into the stack's registry
    # Grafana at <public_url>/grafana/, by its upstream image (gpuhub builds none: Debian has no
    # package), e.g. grafana/grafana-oss:11.3.0; empty: no Grafana (gpuhub_spawner/deploy/grafana.py)
    grafana_image: str = ""

    @field_validator("grafana_image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_.-]{1,128})?(@sha256:[0-9a-f]{64})?", value):
            raise ValueError(f"{value!r} is not an image reference: write e.g. grafana/grafana-oss:11.3.0, "
                             "or leave it empty for no Grafana")
        return value

    @field_validator("public_url")
    @classmethod
    def _https(cls, value: str) -> str:
        url = urlparse(value)
        if url.scheme != "https" or not url.hostname or url.path not in ("", "/") or url.query or url.port:
            raise ValueError(f"{value!r} is not an https URL of a host: write e.g. https://workshop.example.org "
                             "(Caddy serves it on port 443; no path, no port)")
        return value.rstrip("/")

    @field_validator("secrets_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path: write e.g. /etc/gpuhub/secrets")
        return value

    @field_validator("stack_name")
    @classmethod
    def _stack(cls, value: str) -> str:
        if not STACK_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a stack name: use lower-case letters, digits, - and _ "
                             "(at most 30), e.g. gpuhub")
        return value

    @model_validator(mode="after")
    def _acme_needs_a_name(self) -> Deploy:
        from gpuhub_spawner.core.config import _KeyProblems

        host = self.domain
        if self.tls.mode == "acme" and (re.fullmatch(r"[0-9.]+|.*:.*", host) or "." not in host):
            raise _KeyProblems([("tls.mode", f"acme needs a public DNS name, not {host!r}: use mode: files "
                                             "with your certificate, or internal for a trial")])
        return self

    @property
    def domain(self) -> str:
        """The host name of :attr:`public_url` (Caddy's site, the certificate's name)."""
        return urlparse(self.public_url).hostname or ""


def deploy_problems(cfg: Any) -> Iterator[tuple[str, str]]:
    """(key path, message) for what the deploy section asks of the rest of the file."""
    deploy = cfg.deploy
    if deploy is None:
        return
    allowed = [cfg.images.default, *cfg.images.allowed]
    for i, image in enumerate(deploy.push_images):
        if image not in allowed:
            yield f"deploy.push_images[{i}]", (
                f"{image!r} is not an image servers may run: add it to images.allowed, or remove it here"
            )
    if cfg.hub.docker_host:
        yield "hub.docker_host", (
            f"{cfg.hub.docker_host!r}, but the deployed hub uses its manager's Docker socket: remove hub.docker_host"
        )


class NFSStorage(_Section):
    """An NFS export with one directory per user (``<export_root>/<user>/scratch``, ``.../tutorials-copy``)."""

    server: str = Field(min_length=1)  # host name or address of the NFS server
    export_root: str = Field(min_length=1)  # e.g. /export/gpuhub
    options: str = "nfsvers=4.1"  # mount options besides addr= and rw

    @field_validator("server", "export_root", "options")
    @classmethod
    def _mountable(cls, value: str, info: Any) -> str:
        if info.field_name == "export_root" and (not value.startswith("/") or ".." in value.split("/")):
            raise ValueError(f"{value[:60]!r} is not an absolute path: write the exported directory, e.g. /export/gpuhub")
        if any(c.isspace() or (info.field_name == "server" and c in ",=") for c in value):
            raise ValueError(f"{value[:60]!r}: write a host name or address, and options as a,b=c")
        return value


class Storage(_Section):
    """Users' ~/scratch and ~/my-tutorials: node-local volumes (on a swarm a user's next server goes
    to the node holding them), or on NFS (they follow users everywhere)."""

    nfs: NFSStorage | None = None
