"""The one parser of gpuhub's container and service labels."""

import pytest

from gpuhub_spawner.core.labels import ServerLabels

FULL = {
    "org.gpuhub.hub": "hub-1",
    "org.gpuhub.user": "ann",
    "org.gpuhub.server": "lab",
    "org.gpuhub.unit": "GPU-aaaa/slot-1",
    "org.gpuhub.pool": "shared",
    "org.gpuhub.profile": "shared",
    "org.gpuhub.node": "n1",
    "com.docker.compose.project": "other",
}


@pytest.mark.parametrize(
    "labels, expected",
    [
        pytest.param(FULL, ServerLabels("hub-1", "ann", "lab", "GPU-aaaa/slot-1", "shared", "shared", "n1"), id="full"),
        pytest.param({"org.gpuhub.user": "bob"}, ServerLabels(user="bob"), id="cpu-default-server"),
        pytest.param({"org.gpuhub.network": "users"}, ServerLabels(), id="not-a-server"),
        pytest.param(None, ServerLabels(), id="no-labels"),
        pytest.param({"org.gpuhub.user": None, "org.gpuhub.unit": None}, ServerLabels(), id="null-values"),
    ],
)
def test_from_labels(labels, expected):
    assert ServerLabels.from_labels(labels) == expected


def test_server_hub_and_key():
    parsed = ServerLabels.from_labels(FULL)
    assert parsed.is_server and parsed.key == ("ann", "lab")
    assert parsed.of_hub("hub-1") and parsed.of_hub("") and not parsed.of_hub("hub-2")
    assert not ServerLabels.from_labels({"org.gpuhub.hub": "hub-1"}).is_server
