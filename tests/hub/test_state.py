"""Per-hub state: one object per hub id, and the hub-side metrics registered with the first one.

The registry checks run in a fresh interpreter: this test process has made hub states already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from gpuhub_spawner.hub.state import HubState


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_spawners_registers_no_metric():
    out = _run(
        """
        from prometheus_client import REGISTRY, generate_latest
        import gpuhub_spawner.hub.spawners, gpuhub_spawner.hub.swarmspawner, gpuhub_spawner.hub.mixin
        print("gpuhub_" in generate_latest(REGISTRY).decode())
        from gpuhub_spawner.hub.state import HubState
        HubState.for_hub("course-a")
        HubState.for_hub("course-b")  # a second hub: no second registration (that would raise)
        HubState.for_hub("course-a")
        text = generate_latest(REGISTRY).decode()
        print(text.count("# TYPE gpuhub_queue_length gauge"), text.count("# TYPE gpuhub_spawn_refusals_total"))
        """
    )
    assert out.split() == ["False", "1", "1"], out


class _Line:
    def __init__(self, lengths: dict[str, int]):
        self.lengths = lengths

    def queue_lengths(self) -> dict[str, int]:
        return dict(self.lengths)


def test_the_queue_gauge_reads_the_state_objects():
    registry = CollectorRegistry()
    a, b = HubState.for_hub("state-test-a", registry), HubState.for_hub("state-test-b", registry)
    HubState.for_hub("state-test-a", registry)  # once per registry
    try:
        line = _Line({"gpu": 2})
        a.gate("swarm", lambda: line)
        b.add_queue_source(_Line({"gpu": 1, "mig-1g-10gb": 3}))
        b.add_queue_source(_Line({"gpu": 0}))
        text = generate_latest(registry).decode()
        assert 'gpuhub_queue_length{pool="gpu"} 3.0' in text
        assert 'gpuhub_queue_length{pool="mig-1g-10gb"} 3.0' in text
        line.lengths["gpu"] = 0  # computed at scrape time from the live objects
        assert 'gpuhub_queue_length{pool="gpu"} 1.0' in generate_latest(registry).decode()
        assert 'gpuhub_spawn_refusals_total{reason="quota-exceeded"} 0.0' in text
    finally:
        HubState.forget("state-test-a")
        HubState.forget("state-test-b")


def test_one_state_per_hub_and_shared_objects_made_once():
    made = []

    def factory():
        made.append(1)
        return SimpleNamespace(queues={})

    try:
        state = HubState.for_hub("state-test-c")
        assert HubState.for_hub("state-test-c") is state
        assert HubState.for_hub("state-test-d") is not state
        first = state.allocator("engine-1", factory)
        assert state.allocator("engine-1", factory) is first and len(made) == 1
        assert state.allocator("engine-2", factory) is not first
        assert HubState.for_hub("state-test-d").allocators == {}  # hubs never see each other's
    finally:
        HubState.forget("state-test-c")
        HubState.forget("state-test-d")
    assert HubState.for_hub("state-test-c") is not state  # forgotten: a new one
    HubState.forget("state-test-c")
