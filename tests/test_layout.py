"""The tree's promises: which process may import what, and how big a piece of code may grow.

- ``gpuhub_spawner.core`` is imported by every process (hub, services, node agent, operator CLI):
  it must load where JupyterHub, DockerSpawner, SQLAlchemy and the services are not installed.
- ``gpuhub_spawner.node`` runs on GPU nodes (the agent image installs core + node only).
- No module over 600 lines and no function over 60 lines in ``gpuhub_spawner/`` and
  ``hub_services/``: past that a reader can no longer hold the piece in their head.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("gpuhub_spawner", "hub_services")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60

# Run in a fresh interpreter: a finder refuses the hub-side packages, so an import that drags
# one of them in fails here with its name.
BLOCKED_IMPORT = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed where this code runs")
        return None
sys.meta_path.insert(0, Block())
import importlib
for module in {modules!r}:
    importlib.import_module(module)
print("ok")
"""

HUB_SIDE = ["jupyterhub", "dockerspawner", "oauthenticator", "nativeauthenticator", "sqlalchemy", "hub_services"]


def _modules(package: str) -> list[str]:
    root = REPO / package.replace(".", "/")
    names = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        if "migrations" in parts:
            continue  # Alembic's scripts run inside Alembic, not as imports
        names.append(".".join(parts))
    return names


def _import_blocked(modules: list[str], blocked: list[str]) -> subprocess.CompletedProcess:
    code = BLOCKED_IMPORT.format(blocked=blocked, modules=modules)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_core_imports_without_the_hub_side():
    modules = _modules("gpuhub_spawner.core")
    assert len(modules) > 5, modules
    result = _import_blocked(modules, HUB_SIDE)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_node_code_imports_without_the_hub_side():
    modules = _modules("gpuhub_spawner.node")
    assert "gpuhub_spawner.node.agent" in modules
    result = _import_blocked(modules, HUB_SIDE)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_blocking_finder_does_block():
    # the check above is only worth something if a hub-side import really fails under it
    result = _import_blocked(["gpuhub_spawner.hub.spawners"], HUB_SIDE)
    assert result.returncode != 0 and "is not installed where this code runs" in result.stderr


def _sizes():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text()
            yield path, len(text.splitlines()), ast.parse(text)


def test_no_module_over_600_lines():
    big = {str(p.relative_to(REPO)): n for p, n, _ in _sizes() if n > MAX_MODULE_LINES}
    assert not big, f"split these modules (over {MAX_MODULE_LINES} lines): {big}"


def test_no_function_over_60_lines():
    long = {}
    for path, _, tree in _sizes():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}::{node.name}"] = lines
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"
