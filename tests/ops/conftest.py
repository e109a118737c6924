"""Shared pieces of the ops tests: the ``gpuhub`` command as operators run it, and a hub's state on disk."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import free_port

sys.path.insert(0, str(Path(__file__).parent))
import statefill  # noqa: E402 - beside this file


def gpuhub(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``gpuhub ARGS`` in a subprocess, with only ``env``'s GPUHUB_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GPUHUB_", "JUPYTERHUB_", "PG"))}
    return subprocess.run(
        [sys.executable, "-m", "gpuhub_spawner.cli", *args],
        env={**base, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )


@dataclass
class State:
    """One hub's state: its data dir, secrets dir, database URLs and the env that names them."""

    root: Path
    hub_url: str = ""
    usage_url: str = ""
    secret_values: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def config(self) -> Path:
        return self.root / "gpuhub.yaml"

    def __post_init__(self) -> None:
        self.hub_url = self.hub_url or f"sqlite:///{self.data_dir / 'jupyterhub.sqlite'}"
        self.usage_url = self.usage_url or f"sqlite:///{self.data_dir / 'gpuhub-usage.sqlite'}"
        self.root.mkdir(parents=True, exist_ok=True)
        lines = ["hub:", f"  data_dir: {self.data_dir}", f"  bind_url: http://127.0.0.1:{free_port()}",
                 f"  proxy_api_port: {free_port()}"]
        if not self.hub_url.startswith("sqlite"):
            lines += [f"  db_url: {self.hub_url}", f"  usage_db_url: {self.usage_url}"]
        self.config.write_text("\n".join(lines) + "\n")

    def args(self) -> list[str]:
        return ["--config", str(self.config), "--secrets-dir", str(self.secrets_dir)]

    def fill(self) -> None:
        """Rows in both databases, a cookie secret in data_dir, a secret in the secrets dir."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        statefill.fill_hub(self.hub_url)
        statefill.fill_usage(self.usage_url)
        self.add_secrets()

    def add_secrets(self) -> None:
        self.secret_values = [secrets.token_hex(32), secrets.token_hex(32)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        for path, value in zip((self.data_dir / "jupyterhub_cookie_secret", self.secrets_dir / "crypt_key"),
                               self.secret_values, strict=True):
            path.write_text(value + "\n")
            path.chmod(0o600)

    def rows(self) -> dict[str, dict[str, list[tuple[str, ...]]]]:
        return {"hub": statefill.table_rows(self.hub_url), "usage": statefill.table_rows(self.usage_url)}


@pytest.fixture
def new_state(tmp_path: Path):
    """A factory of empty states under this test's tmp_path."""
    count = iter(range(100))
    return lambda **urls: State(tmp_path / f"state{next(count)}", **urls)
