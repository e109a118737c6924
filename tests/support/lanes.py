"""Two lanes for ``deploy/gpuhub-test`` (pytest-xdist: ``-p lanes -n 2 --dist load``).

Every test on a swarm rig runs in one lane, one after the other: two rigs at once would share
this machine's two cores and its rig state.  Any other test module goes whole to whichever
lane is free, so its module fixtures (a hub, a database) are made once.

pytest-xdist's own ``--dist loadgroup`` cannot do this with pytest 9 (it renames items by
assigning ``item._nodeid``, which pytest 9 no longer reads), so this plugin gives the scheduler
the lane of each test id itself.  tests/conftest.py refuses a test that uses the ``rig``
fixture from a file not listed here, so the list cannot fall behind.
"""

from __future__ import annotations

from typing import Any

#: the test files whose tests run on a swarm rig (the ``rig`` fixture)
RIG_FILES = frozenset({
    "tests/deploy/test_stack_deploy.py",
    "tests/deploy/test_stack_mirror.py",
    "tests/ops/test_stack_ops.py",
    "tests/swarm/test_culler_swarm.py",
    "tests/swarm/test_distrib_swarm.py",
    "tests/swarm/test_metrics_swarm.py",
    "tests/swarm/test_storage_follows.py",
    "tests/swarm/test_swarm_failclosed.py",
    "tests/swarm/test_swarm_limits.py",
    "tests/swarm/test_swarm_mps.py",
    "tests/swarm/test_swarm_quota_race.py",
    "tests/swarm/test_swarm_security.py",
    "tests/swarm/test_swarm_service_spec.py",
    "tests/swarm/test_swarm_shares.py",
    "tests/swarm/test_swarm_spawner.py",
    "tests/workshop/test_workshop_day.py",
})
RIG_LANE = "swarm-rig"


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def lane(nodeid: str) -> str:
    """The scheduler's unit of a test: the rig lane, else its module."""
    path = file_of(nodeid)
    return RIG_LANE if path in RIG_FILES else path


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane(nodeid)

    return Lanes(config, log)
