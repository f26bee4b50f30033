"""Trial heartbeats: ask-and-tell trials beat while they train, so a study can tell a dead process's trials from
live ones (Optuna beats only inside Study.optimize)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna

HEARTBEAT_S = 30


@contextmanager
def heartbeat_warnings_off() -> Iterator[None]:
    """Silence, for the calls inside only, Optuna's warnings that heartbeats are experimental and meant for
    Study.optimize: ask-and-tell trials here record their own heartbeats (see Heartbeat), on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


class Heartbeat:
    """Record a trial's heartbeat while it trains, so a resumed study can tell dead trials from live ones."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> None:
        # Optuna runs heartbeats only inside study.optimize; ask-and-tell trials need their own.
        self.storage, self.trial_id, self.stop = storage, trial._trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
