"""One Prefect test harness (a temporary API and database) for every flow test in the session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_api():  # noqa: ANN201
    """Prefect's test harness; about 10 s to start, so once per session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
