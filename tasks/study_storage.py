"""Where a study lives (automl.storage or SQLite beside the results): its own light module, because the hooks that
fail a cancelled run's trials import it in a fresh process and must not wait for torch and Lightning to load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from oneformer.spec import ExperimentSpec
from tasks.heartbeats import HEARTBEAT_S, heartbeat_warnings_off


def storage_url(spec: ExperimentSpec) -> str:
    """automl.storage, else SQLite in <results_dir>/automl."""
    if spec.automl.storage:
        return with_driver(spec.automl.storage)
    folder = (Path(spec.results_dir) / "automl").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder}/optuna.db"


def with_driver(url: str) -> str:
    """A bare postgresql:// means psycopg2 to SQLAlchemy; we ship psycopg 3, so name it unless psycopg2 is there."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg2") is None:
        return f"postgresql+psycopg://{rest}"
    return url


def shown(url: str) -> str:
    """The storage URL with any password masked, for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def rdb_storage(spec: ExperimentSpec) -> optuna.storages.RDBStorage:
    """The study's RDB storage, with heartbeats so trials of a killed process can be told apart."""
    url = storage_url(spec)
    try:
        with heartbeat_warnings_off():
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise RuntimeError(f"automl.storage: cannot open the Optuna study database {shown(url)}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0]}. Check the URL, that the server "
                           f"is up and the database exists (a SQLAlchemy URL such as "
                           f"postgresql://user@host:5432/optuna, the password in PGPASSWORD or in the URL of a spec "
                           f"file on the worker)") from exc
