"""What every DataLoader worker does first, so that workers forked inside a Prefect task live and exit cleanly."""

from __future__ import annotations

import os
import threading


def worker_init(worker_id: int) -> None:
    """Drop the interpreter-exit hooks the worker inherited from the other threads of its parent, then seed it the way
    Lightning does (train: pl.seed_everything(workers=True)).

    fork copies one thread but all of the process's state. Prefect registers a threading exit hook per service thread
    (threading._register_atexit); in a forked worker those threads do not exist, the hook fails an assertion at the
    worker's exit and the worker exits with code 1, which the DataLoader reports as "worker exited unexpectedly":
    every loader with num_workers > 0 inside a Prefect task failed so. Python offers no public way to unregister
    them, hence the private list; a forkserver or spawn start would re-import the flow's main module instead.
    """
    hooks = getattr(threading, "_threading_atexits", None)
    if isinstance(hooks, list):
        hooks.clear()
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
