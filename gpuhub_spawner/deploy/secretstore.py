"""The stack's secrets on the manager: a directory (0700) of files (0600), one per secret.

Generated ones (crypt key, tokens, database password) are made on first use and kept, so a
second ``gpuhub deploy`` gives the same values; the operator's (the GitHub OAuth app's client
secret, a tutorials token) are taken from the environment once or put there by hand.  A
value is never printed; its swarm secret's version is a short digest of it, so a changed value
is a new swarm secret and never clashes with the one the running services hold.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

#: generated on first use (JupyterHub's crypt key is 32 bytes, hex-encoded)
GENERATED = ("crypt_key", "prometheus_token", "agent_token", "webhook_secret", "db_password",
             "tutorial_mirror_token", "grafana_admin_password")
#: given by the operator: the variable it may come from
GIVEN = {"github_client_secret": "GITHUB_CLIENT_SECRET", "tutorials_token": "GPUHUB_TUTORIALS_TOKEN"}


class SecretError(Exception):
    """A secret cannot be had: the message says which file to write."""


def version(value: bytes) -> str:
    """The version part of a swarm secret's name: 12 hex digits of the value's SHA-256."""
    return hashlib.sha256(value).hexdigest()[:12]


def _write_new(path: Path, value: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def ensure(directory: Path, name: str, environ: Mapping[str, str], dry_run: bool = False) -> tuple[bytes | None, str]:
    """The value of secret ``name`` (``None`` in a dry run where it would be made) and what was
    done ("kept", "generated", "from GITHUB_CLIENT_SECRET"), making it when missing."""
    path = directory / name
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return path.read_bytes().strip(), "kept"
    if name in GENERATED:
        value = secrets.token_hex(32)
        how = "generated"
    elif environ.get(GIVEN.get(name, ""), "").strip():
        value = environ[GIVEN[name]].strip()
        how = f"from {GIVEN[name]}"
    else:
        variable = GIVEN.get(name, name.upper())
        raise SecretError(
            f"the secret {name} is missing: write it into {path} (mode 0600), or set {variable} "
            "for this command once"
        )
    if dry_run:
        return None, f"would be {how}"
    _write_new(path, value)
    return value.encode(), how


def read_file(path: str, what: str) -> bytes:
    """An operator's file the stack takes as a secret (the TLS certificate and key)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SecretError(f"{what}: cannot read {path} ({e.strerror}): fix deploy.tls in gpuhub.yaml") from None
    if b"-----BEGIN" not in data:
        raise SecretError(f"{what}: {path} is not a PEM file: give the PEM certificate chain and key")
    return data
