"""``gpuhub node prepull``'s pure half: names in the stack's registry, the workers' lines, the report.

The rig test (tests/swarm/test_distrib_swarm.py) runs it against a real registry and real nodes;
the worker's pull is run here against the host's real engine and a registry that cannot be reached.
"""

from __future__ import annotations

import pytest

from gpuhub_spawner.node.prepull import (
    Outcome,
    explain_task_error,
    in_registry,
    parse_log,
    pull_one,
    report,
    split_tag,
)


@pytest.mark.parametrize(
    ("image", "registry", "read_as"),
    [
        pytest.param("gpuhub/singleuser:latest", "10.0.0.2:5000", "10.0.0.2:5000/gpuhub/singleuser:latest", id="ours"),
        pytest.param("gpuhub/singleuser:latest", "", "gpuhub/singleuser:latest", id="no-registry"),
        pytest.param("quay.io/jupyter/base:2024", "10.0.0.2:5000", "quay.io/jupyter/base:2024", id="has-its-own"),
        pytest.param("localhost/x:1", "10.0.0.2:5000", "localhost/x:1", id="localhost"),
        pytest.param("reg:5000/x", "10.0.0.2:5000/", "reg:5000/x", id="host-port"),
    ],
)
def test_images_are_read_from_the_stacks_registry_unless_they_name_one(image, registry, read_as):
    assert in_registry(image, registry) == read_as


@pytest.mark.parametrize(
    ("image", "split"),
    [
        ("gpuhub/singleuser:latest", ("gpuhub/singleuser", "latest")),
        ("10.0.0.2:5000/gpuhub/singleuser", ("10.0.0.2:5000/gpuhub/singleuser", "latest")),
        ("10.0.0.2:5000/a:1", ("10.0.0.2:5000/a", "1")),
        ("a@sha256:" + "0" * 64, ("a@sha256:" + "0" * 64, None)),
    ],
)
def test_split_tag(image, split):
    assert split_tag(image) == split


def test_the_report_has_one_line_per_node_and_image_and_says_why_a_node_said_nothing():
    log = [
        'gpuhub-prepull-1.abc@gpu-1    | {"node": "gpu-1", "image": "r/a:1", "result": "pulled", "seconds": 61.2}',
        "some other line",
        '{"node": "gpu-1", "image": "r/b:1", "result": "already there"}',
        '{"node": "gpu-2", "image": "r/a:1", "result": "failed", "reason": "manifest unknown"}',
    ]
    outcomes = report(["gpu-2", "gpu-1", "gpu-3"], ["r/a:1", "r/b:1"], parse_log(log),
                      {"gpu-3": explain_task_error("No such image: gpuhub/node-agent:latest", "gpuhub/node-agent:latest")})
    lines = [o.line() for o in outcomes]
    assert lines[:4] == [
        "gpu-1: r/a:1: ok (pulled, 61s)",
        "gpu-1: r/b:1: ok (already there)",
        "gpu-2: r/a:1: FAILED: manifest unknown",
        "gpu-2: r/b:1: FAILED: no answer within the timeout (is the node up? see docker service ps)",
    ]
    assert lines[4].startswith("gpu-3: r/a:1: FAILED: the node cannot get the prepull worker's image")
    assert "--agent-image" in lines[4]
    assert [o.ok for o in outcomes] == [True, True, False, False, False, False]
    assert Outcome("gpu-1", "r/a:1", "present").line(with_image=False) == "gpu-1: ok"


def test_a_node_that_has_the_image_but_cannot_reach_its_registry_is_ready_and_says_it_did_not_check(docker_client):
    """An offline node loaded by hand: swarm starts servers from its local image when the pull
    fails, so the prepull says ok (not checked, with the engine's reason); without the image, FAILED."""
    from harness import IMAGE

    unreachable = "127.0.0.1:9/gpuhub-prepull-test"  # nothing listens on the discard port
    docker_client.images.get(IMAGE).tag(unreachable, "kept")
    try:
        kept = pull_one(docker_client, f"{unreachable}:kept", timeout=60)
        absent = pull_one(docker_client, f"{unreachable}:absent", timeout=60)
    finally:
        docker_client.images.remove(f"{unreachable}:kept", noprune=True)
    assert kept["result"] == "kept" and "127.0.0.1:9" in kept["reason"], kept
    assert absent["result"] == "failed" and absent["reason"], absent
    line = Outcome("gpu-1", f"{unreachable}:kept", kept["result"], kept["reason"]).line(with_image=False)
    assert line.startswith("gpu-1: ok (already there; not checked for a newer one: "), line
