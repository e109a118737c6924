"""What the tests need from the machine: in CI (``CI=true``) a missing piece is a failure,
because `.ci/run` must provide it; on a developer's machine it is a skip."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: deploy/setup-host.sh installs it)", pytrace=False)
    pytest.skip(reason)
