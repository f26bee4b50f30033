"""Every flow test runs against the session's Prefect test harness."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _harness(prefect_api: None) -> None:
    """Flows need an API; the harness starts once per session."""
