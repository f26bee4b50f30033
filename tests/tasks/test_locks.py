"""One writer per results folder or study, held through Prefect's global concurrency limits."""

from __future__ import annotations

import threading

import pytest

from tasks.locks import Busy, exclusive


def test_a_second_writer_is_refused_while_the_first_holds_and_admitted_after(prefect_api) -> None:  # noqa: ANN001
    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with exclusive("results folder", "/data/results-lock-test"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(Busy, match="another run is writing the results folder /data/results-lock-test"):
            with exclusive("results folder", "/data/results-lock-test", wait_s=1):
                pass
        # another folder is free: it is taken at once, the wait only covers a slow API (CI's 2 cores under load
        # once took over 1 s to answer)
        with exclusive("results folder", "/data/other-folder", wait_s=15):
            pass
    finally:
        release.set()
        t.join()
    with exclusive("results folder", "/data/results-lock-test", wait_s=15):  # free again once released
        pass


def test_a_killed_holder_on_this_machine_is_released_at_once(prefect_api, tmp_path) -> None:  # noqa: ANN001
    """SIGKILL leaves the lease to expire (LEASE_S); a rerun on the same machine sees the holder's process is gone
    and takes the folder now, as a user who killed a run and started it again expects."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    from tasks.locks import claim_path, limit_name

    folder = str(tmp_path / "results")
    code = ("import time, sys; from tasks.locks import exclusive\n"
            f"with exclusive('results folder', {folder!r}):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_HOME": str(PREFECT_HOME.value())}
    holder = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy):  # alive: refused
            with exclusive("results folder", folder, wait_s=1):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
    assert claim_path(limit_name("results folder", folder)).is_file()  # the killed run never cleaned up
    t0 = time.monotonic()
    with exclusive("results folder", folder, wait_s=1):
        pass
    assert time.monotonic() - t0 < 30  # well before the 120 s lease would have expired
    assert not claim_path(limit_name("results folder", folder)).exists()


@pytest.mark.slow  # two ephemeral Prefect servers, about 30 s
def test_a_killed_run_on_the_local_ephemeral_api_does_not_lock_its_folder_forever(tmp_path) -> None:  # noqa: ANN001
    """`python -m flows.pipeline` runs on an ephemeral API per process over one database (PREFECT_HOME): Prefect
    keeps leases in that server's memory, so a SIGKILLed run's slot outlived its lease and nothing ever freed it.
    The next run on this machine takes it back."""
    import os
    import signal
    import subprocess
    import sys

    folder = str(tmp_path / "results")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    hold = ("import time; from tasks.locks import exclusive\n"
            f"with exclusive('results folder', {folder!r}):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold], env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the holder and its ephemeral server, leases and all
        holder.wait(30)
    take = ("from tasks.locks import exclusive\n"
            f"with exclusive('results folder', {folder!r}, wait_s=2):\n"
            "    print('taken', flush=True)\n")
    rerun = subprocess.run([sys.executable, "-c", take], env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0 and "taken" in rerun.stdout, rerun.stderr[-3000:]
