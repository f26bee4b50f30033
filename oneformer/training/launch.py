"""DDP processes started here, not by Lightning: Lightning's own launcher re-executes the current command line, which
inside a Prefect worker is the flow engine, not the trainer. Each spawned process gets the environment Lightning's
LightningEnvironment reads (LOCAL_RANK set means the processes were created outside Lightning), so Lightning joins
them into one process group instead of starting processes of its own. Multi-node runs keep TAO's environment:
NODE_RANK, MASTER_ADDR and MASTER_PORT from the orchestrator, one call of this per node."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from oneformer import errors
from oneformer.artifacts import write_json

log = logging.getLogger(__name__)

ERROR_FILE = ".ddp-rank{rank}.error.json"  # a process's user error, for the launching process to raise as is


def in_spawned_process() -> bool:
    """True inside a process this module (or torchrun, or a cluster) started for DDP."""
    return "LOCAL_RANK" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(local_rank: int, fn: Callable[..., Any], args: tuple, env: dict[str, str], nprocs: int,
            folder: str) -> None:
    """One DDP process: its rank's environment, a fair share of the CPU threads, then `fn(*args)`."""
    node_rank = int(env["NODE_RANK"])
    os.environ.update(env, LOCAL_RANK=str(local_rank), RANK=str(node_rank * nprocs + local_rank))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
    try:
        fn(*args)
    except errors.OneFormerError as exc:  # the launcher raises it again, as the user would have seen it
        write_json(Path(folder) / ERROR_FILE.format(rank=os.environ["RANK"]),
                   {"type": type(exc).__name__, "message": str(exc)})
        raise


def run_processes(fn: Callable[..., Any], args: tuple, nprocs: int, num_nodes: int, folder: Path) -> None:
    """`fn(*args)` in `nprocs` spawned processes on this node joined into one DDP group over `num_nodes` nodes; a
    user error raised in any of them is raised here, the same error."""
    env = {"MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
           "MASTER_PORT": os.environ.get("MASTER_PORT") or str(_free_port()),
           "NODE_RANK": os.environ.get("NODE_RANK", "0"), "WORLD_SIZE": str(nprocs * num_nodes)}
    for stale in folder.glob(ERROR_FILE.format(rank="*")):
        stale.unlink()
    log.info("DDP: %d processes on this node (node %s of %d), master %s:%s", nprocs, env["NODE_RANK"], num_nodes,
             env["MASTER_ADDR"], env["MASTER_PORT"])
    try:
        with _main_not_rerun():
            mp.start_processes(_worker, args=(fn, args, env, nprocs, str(folder)), nprocs=nprocs, join=True,
                               start_method="spawn")
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        for path in sorted(folder.glob(ERROR_FILE.format(rank="*"))):
            found = json.loads(path.read_text())
            path.unlink()
            raise _rebuilt(found["type"], found["message"]) from None
        raise


@contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Spawned processes import only what they unpickle: by default Python's spawn also re-imports the launching
    program's main module (the Prefect flow engine, a script, or `<stdin>`, which cannot be imported at all)."""
    main = sys.modules["__main__"]
    saved = {k: getattr(main, k) for k in ("__spec__", "__file__") if hasattr(main, k)}
    main.__spec__ = None
    if hasattr(main, "__file__"):
        del main.__file__
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(main, key, value)


def _rebuilt(kind: str, message: str) -> errors.OneFormerError:
    """The error a spawned process raised, as its own class with its own message."""
    cls = getattr(errors, kind, errors.OneFormerError)
    if not (isinstance(cls, type) and issubclass(cls, errors.OneFormerError)):
        cls = errors.OneFormerError
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    if isinstance(exc, errors.SpecError):
        exc.problems = [line.strip().removeprefix("- ") for line in message.splitlines()[1:]]
    return exc
