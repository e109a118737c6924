"""``inventory.reservation_grace_minutes`` in gpuhub.yaml reaches the spawners, the documented way:
jupyterhub_config.py reads the file named by GPUHUB_CONFIG."""

from __future__ import annotations

from pathlib import Path

from traitlets.config import PyFileConfigLoader

REPO = Path(__file__).resolve().parents[2]


def test_the_grace_period_set_in_gpuhub_yaml_is_the_spawners(tmp_path, monkeypatch):
    config_file = tmp_path / "gpuhub.yaml"
    config_file.write_text(f"hub:\n  data_dir: {tmp_path / 'data'}\n"
                           "inventory:\n  discovery: static\n  gpus: []\n  reservation_grace_minutes: 25\n")
    monkeypatch.setenv("GPUHUB_CONFIG", str(config_file))
    for key in ("GPUHUB_DATA_DIR", "GPUHUB_EXTRA_CONFIG", "GITHUB_CLIENT_ID"):
        monkeypatch.delenv(key, raising=False)
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(REPO)).load_config()
    assert config.GPUDockerSpawner.gpu_reservation_grace == 25
