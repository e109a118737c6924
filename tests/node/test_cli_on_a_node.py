"""`gpuhub node ...` on a GPU node whose install has only what the node side needs.

The manager's commands (deploy, status, backup, restore, upgrade) import PyYAML, pydantic and
the hub's packages; a node without them must still run `gpuhub node setup`, and those commands
must say what is missing instead of a traceback (the swarm rig's nodes are such installs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: a Python whose imports of these top-level packages fail, as on a node that lacks them
BLOCKED = ("yaml", "pydantic", "sqlalchemy", "jupyterhub", "prometheus_client")
BLOCKER = f"""
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
"""


def gpuhub(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "gpuhub_spawner.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_node_commands_run_without_the_managers_dependencies(tmp_path):
    r = gpuhub(tmp_path, "node", "setup", "--help")
    assert r.returncode == 0, r.stderr
    assert "--registry" in r.stdout


def test_a_managers_command_there_says_what_is_missing(tmp_path):
    r = gpuhub(tmp_path, "deploy", "--config", "gpuhub.yaml")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("gpuhub deploy: this installation lacks "), r.stderr
    assert "pip install gpuhub" in r.stderr
