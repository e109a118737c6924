"""The command line of `gpuhub node setup` in tests: a static inventory and every file it
writes in ``tmp_path``, Docker "restarted" by `true` (nothing on this machine is touched)."""

from __future__ import annotations

import json
from pathlib import Path

ONE_GPU = [{"uuid": "GPU-5a5a0000-0000-4000-8000-0000000000aa", "name": "A100 40GB", "memory_mb": 40960}]


def setup_argv(tmp_path: Path, *extra: str, gpus: list | None = None) -> list[str]:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps(ONE_GPU if gpus is None else gpus))
    return ["node", "setup", "--static", str(path), "--daemon-json", str(tmp_path / "daemon.json"),
            "--runtime-config", str(tmp_path / "config.toml"), "--restart-command", "true", *extra]
