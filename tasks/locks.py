"""One writer at a time: a Prefect global concurrency limit of 1 per results folder and per study, so two runs can
never write the same files or the same study at once, on one machine or many. Slots are leased and renewed while
the run lives; a killed run's slot frees itself when its lease expires, and at once when the rerun is on the
killed run's machine (its claim names a process that no longer exists)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError

# the sync pieces of prefect.concurrency.sync.concurrency, used one by one because the lease id it keeps to itself
# is what a rerun on this machine needs to release a killed run's slot (Prefect has no public call for that)
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import acquire_concurrency_slots_with_lease, release_concurrency_slots_with_lease
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL, PREFECT_HOME

from oneformer.artifacts import write_json
from oneformer.errors import OneFormerError

WAIT_S = 15.0  # how long a second run waits for the first to let go before it gives up
LEASE_S = 120.0  # a crashed holder's slot is free again after this long


class Busy(OneFormerError):
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


def claim_path(name: str) -> Path:
    """Where this machine notes which process holds `name`'s lease (beside the Prefect settings it talks with)."""
    return Path(PREFECT_HOME.value()).expanduser() / "oneformer-claims" / f"{name}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def release_dead_holder(name: str) -> bool:
    """Release the lease of a holder on this machine whose process is gone (True when one was released)."""
    path = claim_path(name)
    try:
        claim = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if claim.get("host") != socket.gethostname() or _alive(int(claim.get("pid", 0))):
        return False
    try:
        release_concurrency_slots_with_lease(claim["lease_id"])
    except Exception:  # noqa: BLE001 - an expired or already released lease: nothing left to free
        pass
    if claim.get("ephemeral"):
        # an ephemeral API keeps leases in its memory: the killed run's went with its server while the slot it
        # counted stayed taken in the database, so nothing would ever free it; take the slot back directly. (On a
        # server the lease outlives the run, and releasing it above is enough: a slot taken since by another run
        # is never touched.)
        with get_client(sync_client=True) as client:
            if client.read_global_concurrency_limit_by_name(name).active_slots > 0:
                client.release_concurrency_slots([name], 1, occupancy_seconds=1.0)  # the API wants > 0
    path.unlink(missing_ok=True)
    return True


def _acquire(name: str, wait_s: float):  # noqa: ANN202 - Prefect's lease response
    return acquire_concurrency_slots_with_lease([name], 1, timeout_seconds=wait_s, lease_duration=LEASE_S,
                                                strict=True)


@contextmanager
def exclusive(kind: str, what: str, wait_s: float = WAIT_S) -> Iterator[str]:
    """Hold the only slot of `what`'s limit for the block; Busy when another run keeps it past `wait_s`."""
    name = limit_name(kind, what)
    ensure_limit(name)
    try:
        lease = _acquire(name, wait_s)
    except AcquireConcurrencySlotTimeoutError:
        if not release_dead_holder(name):
            raise Busy(f"another run is writing the {kind} {what} (Prefect concurrency limit {name}); wait for it "
                       f"to finish, or give this run its own results_dir / study. A run killed on another machine "
                       f"frees it within {LEASE_S:.0f} s") from None
        lease = _acquire(name, wait_s)  # the killed holder's slot is free now
    claim = claim_path(name)
    claim.parent.mkdir(parents=True, exist_ok=True)
    write_json(claim, {"host": socket.gethostname(), "pid": os.getpid(), "lease_id": str(lease.lease_id), "what": what,
                       "ephemeral": not PREFECT_API_URL.value()})
    try:
        with maintain_concurrency_lease(lease.lease_id, LEASE_S, raise_on_lease_renewal_failure=True):
            yield name
    finally:
        claim.unlink(missing_ok=True)
        release_concurrency_slots_with_lease(lease.lease_id)
