"""``gpuhub status``'s pure half: reading a start's progress, nodes and pools, the text form."""

from __future__ import annotations

import pytest

from gpuhub_spawner.core.cluster import ClusterView
from gpuhub_spawner.status.report import (
    Report,
    format_text,
    nodes_report,
    pools_from_metrics,
    queue_report,
    stack_service_report,
    waiting_from_progress,
)

IN_LINE = ("All MIG 1g.10gb units are in use. You are #{} of 3 in line (waited 4s, at most 300s). "
           "Or cancel and start a CPU-only server.")


@pytest.mark.parametrize(
    ("messages", "wants", "position"),
    [
        pytest.param(["Reserving a MIG 1g.10gb…", IN_LINE.format(3), IN_LINE.format(2)], "MIG 1g.10gb", 2,
                     id="moves-up"),
        pytest.param(["Reserving a MIG 1g.10gb…", IN_LINE.format(1), "Assigned MIG 1g.10gb on node gpu-2…"],
                     "MIG 1g.10gb", None, id="left-the-line"),
        pytest.param(["Reserving a whole GPU…"], "whole GPU", None, id="not-in-line"),
        pytest.param([], "", None, id="nothing-said-yet"),
    ],
)
def test_the_place_in_line_is_the_latest_one_said(messages, wants, position):
    w = waiting_from_progress("ann", "", messages)
    assert (w.wants, w.position) == (wants, position)
    assert w.last_message == (messages[-1] if messages else "")


def test_the_queue_lists_those_in_line_first_by_position():
    rows = queue_report([
        waiting_from_progress("cy", "", ["Reserving a whole GPU…"]),
        waiting_from_progress("bo", "", [IN_LINE.format(2)]),
        waiting_from_progress("al", "", [IN_LINE.format(1)]),
    ])
    assert [(r["user"], r["state"], r["position"]) for r in rows] == [
        ("al", "in line", 1), ("bo", "in line", 2), ("cy", "starting", None)]


def _node(node_id: str, host: str, availability: str, resources: list[tuple[str, str]], state: str = "ready") -> dict:
    generic = [{"NamedResourceSpec": {"Kind": k, "Value": v}} for k, v in resources]
    return {"ID": node_id, "Description": {"Hostname": host, "Resources": {"GenericResources": generic}},
            "Status": {"State": state, "Addr": "10.0.0.1"}, "Spec": {"Availability": availability, "Role": "worker"}}


def test_nodes_show_state_and_free_units_per_pool():
    mig = "NVIDIA_MIG_1G_10GB"
    nodes = [
        _node("n1", "gpu-1", "active", [(mig, "MIG-a"), (mig, "MIG-b")]),
        _node("n2", "gpu-2", "drain", [("NVIDIA_GPU", "GPU-c")]),
    ]
    task = {"ID": "t", "ServiceID": "s1", "NodeID": "n1", "DesiredState": "running",
            "Status": {"State": "running"},
            "AssignedGenericResources": [{"NamedResourceSpec": {"Kind": mig, "Value": "MIG-a"}}]}
    view = ClusterView.read(nodes, [task], {"s1": "jupyter-ann"})
    assert nodes_report(view) == [
        {"name": "gpu-1", "role": "worker", "state": "ready", "availability": "active",
         "pools": {"mig-1g.10gb": {"units": 2, "free": 1}}},
        {"name": "gpu-2", "role": "worker", "state": "ready", "availability": "drain",
         "pools": {"gpu": {"units": 1, "free": 0}}},  # a drained node's units are not free
    ]


def test_pools_from_the_exporters_metrics():
    samples = {"gpuhub_pool_capacity_units": {"gpu": 4.0}, "gpuhub_pool_free_units": {"gpu": 1.0}}
    assert pools_from_metrics(samples) == {"gpu": {"units": 4, "free": 1}}
    assert pools_from_metrics({}) == {}


def test_a_stack_service_short_of_replicas_says_why():
    service = {"ID": "s", "Spec": {"Name": "gpuhub_hub", "Mode": {"Replicated": {"Replicas": 1}}}}
    tasks = [{"DesiredState": "shutdown", "UpdatedAt": "2", "Status": {"State": "failed", "Err": "exit 1"}},
             {"DesiredState": "running", "UpdatedAt": "3", "Status": {"State": "starting"}}]
    assert stack_service_report(service, tasks) == {
        "name": "gpuhub_hub", "running": 0, "wanted": 1, "ok": False, "last_error": "exit 1"}
    tasks[1]["Status"]["State"] = "running"
    assert stack_service_report(service, tasks)["ok"] is True
    glob = {"ID": "g", "Spec": {"Name": "gpuhub_mirror", "Mode": {"Global": {}}}}
    assert stack_service_report(glob, tasks)["wanted"] == 1


def test_the_text_form_names_every_part_and_what_could_not_be_read():
    report = Report(
        hub={"url": "https://hub.example.org", "answering": True, "version": "6.1.1"},
        services=[{"name": "gpuhub-admin", "answering": True, "detail": ""},
                  {"name": "tutorial-sync", "answering": False, "detail": "HTTP 503"}],
        stack=[{"name": "gpuhub_db", "running": 1, "wanted": 1, "ok": True, "last_error": ""}],
        nodes=[{"name": "gpu-1", "role": "worker", "state": "ready", "availability": "active",
                "pools": {"gpu": {"units": 2, "free": 0}}}],
        pools={"gpu": {"units": 2, "free": 0}}, queue_lengths={"gpu": 1},
        queue=queue_report([waiting_from_progress("bo", "", ["Reserving a whole GPU…",
                                                                "All whole GPU units are in use. You are #1 of 1 in line"])]),
        problems=["the Docker engine: not reachable"],
    )
    text = format_text(report)
    for line in ("hub: answering (JupyterHub 6.1.1) at https://hub.example.org",
                 "  tutorial-sync: NOT ANSWERING (HTTP 503)",
                 "  gpuhub_db: 1/1 running",
                 "  gpu-1 (worker): ready, active; 0/2 gpu free",
                 "  gpu: 0 free of 2, 1 in line",
                 "  bo: #1 of 1 for whole GPU",
                 "  - the Docker engine: not reachable"):
        assert line in text.splitlines(), text
    assert not report.healthy
    assert Report(hub={"answering": True}).healthy
    assert "(nobody waiting)" in format_text(Report(hub={"answering": True}))


def test_the_stack_settings_come_from_gpuhub_yaml_and_flags_win(tmp_path, capsys, monkeypatch):
    import argparse

    from gpuhub_spawner.cli import main as gpuhub
    from gpuhub_spawner.status import _settings

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    config = tmp_path / "gpuhub.yaml"
    config.write_text("deploy:\n  public_url: https://hub.example.org\n  stack_name: course\n  tls: {mode: internal}\n"
                      "metrics:\n  exporter_port: 9100\n")
    args = argparse.Namespace(config=str(config), hub_url=None, docker_host=None, stack=None, exporter=None)
    assert _settings(args) == ("https://hub.example.org", "", "course", "/services/gpuhub-exporter/")
    args.hub_url, args.stack, args.exporter = "http://127.0.0.1:8000", "other", ""
    assert _settings(args) == ("http://127.0.0.1:8000", "", "other", None)

    config.write_text("deploy:\n  public_url: http://hub.example.org\n")
    assert gpuhub(["status", "--config", str(config), "--token-file", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuhub status: deploy.") and "Traceback" not in err
