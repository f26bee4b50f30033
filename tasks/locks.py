"""One writer at a time: a Prefect global concurrency limit of 1 per results folder and per study, so two runs can
never write the same files or the same study at once, on one machine or many. Slots are leased and renewed while
the run lives; a killed run's slot frees itself when its lease expires."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

WAIT_S = 15.0  # how long a second run waits for the first to let go before it gives up
LEASE_S = 120.0  # a crashed holder's slot is free again after this long


class Busy(RuntimeError):
    """Another run holds the results folder or the study."""


def limit_name(kind: str, what: str) -> str:
    """The global concurrency limit guarding one results folder or study (names are short and URL-safe)."""
    return f"oneformer-{kind}-{hashlib.sha256(what.encode()).hexdigest()[:16]}"


def ensure_limit(name: str) -> None:
    """Create the limit (one slot) on first use."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass


@contextmanager
def exclusive(kind: str, what: str, wait_s: float = WAIT_S) -> Iterator[str]:
    """Hold the only slot of `what`'s limit for the block; Busy when another run keeps it past `wait_s`."""
    name = limit_name(kind, what)
    ensure_limit(name)
    acquired = False
    try:
        with concurrency(name, occupy=1, timeout_seconds=wait_s, lease_duration=LEASE_S, strict=True):
            acquired = True
            yield name
    except AcquireConcurrencySlotTimeoutError:
        if acquired:
            raise
        raise Busy(f"another run is writing the {kind} {what} (Prefect concurrency limit {name}); wait for it to "
                   f"finish, or give this run its own results_dir / study") from None
