"""Every entry point that may start Prefect's ephemeral API waits long enough for it on a loaded machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

READ = ("import {module}; from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; "
        "print(s.value())")


@pytest.mark.parametrize("module", ["flows.pipeline", "tasks.locks"])
def test_the_ephemeral_api_gets_minutes_to_start(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    waits = subprocess.run([sys.executable, "-c", READ.format(module=module)], env=env, capture_output=True,
                           text=True, check=True).stdout.split()[-1]
    assert int(waits) >= 300  # Prefect's own default, 20 s, is what a busy 2-core machine missed


def test_a_startup_timeout_the_user_set_is_kept() -> None:
    """Every entry point takes its wait from the `tasks` package (flows.* and the actions import it), so one
    process shows that the package leaves the user's own setting alone."""
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "45"}
    mine = subprocess.run([sys.executable, "-c", READ.format(module="tasks")], capture_output=True, text=True,
                          env=env, check=True)
    assert mine.stdout.split()[-1] == "45"
