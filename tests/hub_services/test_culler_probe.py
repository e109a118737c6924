"""Reading the kernel probe's output, which comes from a user-controlled container (pure).

Whatever the container prints, the pass must not crash, and an answer that cannot be read
must never make a server look idle: it reads as ``kernels=None`` (kept as ``probe-failed``).
"""

from __future__ import annotations

import json

import pytest

from hub_services.culler.decide import KernelReading, Limits, Signals, decide
from hub_services.culler.probe import MAX_KERNELS, MAX_OUTPUT, parse_probe

GOOD = {"kernels": [{"execution_state": "busy", "last_activity": "2026-01-01T00:00:00Z", "connections": 1}],
        "status": {"last_activity": "2026-01-01T00:00:10.5Z"}}


def dump(doc) -> bytes:
    return json.dumps(doc).encode()


def test_a_good_answer_is_read():
    kernels, activity = parse_probe(dump(GOOD))
    assert kernels == (KernelReading("busy", 1767225600.0, 1),)
    assert activity == 1767225610.5


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(None, id="no-output"),
        pytest.param(b"", id="empty"),
        pytest.param(b"Traceback (most recent call last):", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(dump([1, 2]), id="a-list"),
        pytest.param(dump("kernels"), id="a-string"),
        pytest.param(dump({"status": {}}), id="no-kernels"),
        pytest.param(dump({"kernels": {"a": 1}}), id="kernels-not-a-list"),
        pytest.param(dump({"kernels": ["busy"]}), id="kernel-not-an-object"),
        pytest.param(dump({"kernels": [{}] * (MAX_KERNELS + 1)}), id="too-many-kernels"),
        pytest.param(b'{"kernels": []' + b" " * MAX_OUTPUT + b"}", id="too-big"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
        pytest.param(b'{"kernels": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}", id="nested-kernel"),
    ],
)
def test_an_unreadable_answer_is_a_failed_probe_and_keeps_the_server(output):
    kernels, activity = parse_probe(output)
    assert kernels is None and activity is None
    idle_for_long = Signals(started=0.0, hub_activity=0.0, kernels=kernels)
    assert decide(idle_for_long, Limits(idle_seconds=60), 10_000.0, 30).reason == "probe-failed"


@pytest.mark.parametrize(
    "kernel, expected",
    [
        pytest.param({"execution_state": 7, "last_activity": 3, "connections": "x"}, KernelReading("", None, 0),
                     id="wrong-types"),
        pytest.param({"execution_state": "b" * 10_000}, KernelReading("b" * 32, None, 0), id="long-state"),
        pytest.param({"last_activity": "yesterday"}, KernelReading("", None, 0), id="bad-time"),
        pytest.param({"last_activity": "9" * 5000}, KernelReading("", None, 0), id="huge-time"),
        pytest.param({"connections": 10**30}, KernelReading("", None, 0), id="huge-count"),
    ],
)
def test_odd_fields_are_bounded_not_fatal(kernel, expected):
    kernels, _ = parse_probe(dump({"kernels": [kernel], "status": "odd"}))
    assert kernels == (expected,)
