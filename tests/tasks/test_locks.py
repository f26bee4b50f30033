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
