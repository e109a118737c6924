"""The `gpuhub` operator command."""

from __future__ import annotations

import json

import pytest

from gpuhub_spawner.cli import main


def test_inventory_from_a_static_file(tmp_path, capsys):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([{"uuid": "GPU-aa", "replicas": 2}, {"uuid": "GPU-bb", "mig": [
        {"uuid": "MIG-cc", "profile": "1g.10gb"}]}]))
    assert main(["inventory", "--static", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pools"] == {"shared": 2, "mig-1g.10gb": 1}
    assert out["profiles"] == ["mig-1g-10gb", "shared", "cpu"]
    assert [u["id"] for u in out["units"]] == ["GPU-aa/slot-0", "GPU-aa/slot-1", "MIG-cc"]


@pytest.mark.parametrize(
    "content, expected",
    [
        pytest.param('[{"uuid": "3"}]', "gpu_inventory[0]: '3' is not a GPU UUID", id="index"),
        pytest.param("[{", "Expecting", id="bad-json"),
    ],
)
def test_inventory_rejects_bad_files_without_a_traceback(tmp_path, capsys, content, expected):
    path = tmp_path / "gpus.json"
    path.write_text(content)
    assert main(["inventory", "--static", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.docker
def test_doctor_reports_the_engine_and_image(docker_client, capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "[ok] docker engine" in out and "[ok] single-user image" in out
    assert main(["doctor", "--image", "gpuhub/no-such-image:0"]) == 1
    assert "no-such-image:0 missing" in capsys.readouterr().out
