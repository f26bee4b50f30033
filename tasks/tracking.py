"""MLflow plumbing: where runs go, parent and nested runs, params, metrics, artifacts and dataset inputs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from oneformer.secrets import redact_url
from oneformer.spec import ExperimentSpec, flatten, public_dict

PARENT_TAG = "mlflow.parentRunId"


def tracking_uri(explicit: str | None, results_dir: str | Path) -> str:
    """The parameter, else MLFLOW_TRACKING_URI, else SQLite in the results folder."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_dir).resolve()}/mlflow.db"


def client(uri: str) -> MlflowClient:
    """A client bound to one tracking URI and its registry (MLFLOW_REGISTRY_URI, else the same URI); MLflow's
    process-wide URIs are left as they are."""
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def artifact_root(uri: str, results_dir: Path) -> Path | None:
    """Where a new experiment keeps its artifacts: in the results folder for a local store (MLflow's default is
    ./mlruns, wherever the process happens to run); a tracking server's own store (its proxied artifact
    destination, S3 for instance) when the URI is a server, so every machine of a team reads the same files."""
    return None if uri.startswith(("http://", "https://", "databricks")) else results_dir / "mlartifacts"


def experiment_id(c: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, created with an explicit artifact location (MLflow's default is ./mlruns), or the
    server's default when `artifact_root` is None."""
    found = c.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    return c.create_experiment(name, artifact_location=location)


def start_run(c: MlflowClient, exp: str, name: str, parent: str | None = None,
              tags: dict[str, str] | None = None) -> str:
    """A new run (nested under `parent` when given); returns its id."""
    all_tags = {"mlflow.runName": name, **(tags or {})}
    if parent:
        all_tags[PARENT_TAG] = parent
    return c.create_run(exp, run_name=name, tags=all_tags).info.run_id


def end_if_running(c: MlflowClient, run: str, status: str) -> bool:
    """End a run a dead process left RUNNING (a killed pipeline's or trial's); True when this call ended it."""
    if c.get_run(run).info.status != "RUNNING":
        return False
    c.set_terminated(run, status)
    return True


@contextmanager
def child_run(c: MlflowClient, exp: str, name: str, parent: str) -> Iterator[str]:
    """A run nested under `parent`, closed FINISHED when the block ends, or FAILED if it raises."""
    run = start_run(c, exp, name, parent)
    try:
        yield run
    except BaseException:
        c.set_terminated(run, "FAILED")
        raise
    c.set_terminated(run, "FINISHED")


def log_spec(c: MlflowClient, run: str, spec: ExperimentSpec, path: Path) -> None:
    """The flattened spec as params (100 per batch, MLflow's limit) and the YAML as an artifact, secrets masked."""
    params = [Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
              for k, v in flatten(public_dict(spec)).items()]
    for i in range(0, len(params), 100):
        c.log_batch(run, params=[Param(p.key, p.value[:6000]) for p in params[i:i + 100]])
    c.log_artifact(run, str(path), "spec")


def log_metrics(c: MlflowClient, run: str, metrics: dict[str, Any], prefix: str = "", step: int = 0) -> None:
    """Numeric entries of a metrics dict, flattened with a prefix."""
    now = int(time.time() * 1000)
    rows = [Metric(prefix + k, float(v), now, step) for k, v in flatten(metrics).items()
            if isinstance(v, int | float) and not isinstance(v, bool)]
    for i in range(0, len(rows), 500):
        c.log_batch(run, metrics=rows[i:i + 500])


def set_tags(c: MlflowClient, run: str, tags: dict[str, Any]) -> None:
    """String tags in one call."""
    c.log_batch(run, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_files(c: MlflowClient, run: str, files: list[str | Path], folder: str) -> list[str]:
    """Files as artifacts under `folder`; a missing one is an error (an action said it wrote it)."""
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"cannot log {f} to MLflow run {run}: the file does not exist")
        c.log_artifact(run, str(f), folder)
    return [str(f) for f in files]


def log_run_artifact(c: MlflowClient, run: str, path: Path, folder: str) -> None:
    """One file into a run's artifacts through this client's own URI. MlflowClient.log_artifact reuses an
    artifact repository cached per run id for the whole process, whatever URI made it: after an attempt through
    another address (a proxy, a server since moved) it would keep writing there."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(c.get_run(run).info.artifact_uri, tracking_uri=c.tracking_uri)
    repo.log_artifact(str(path), folder)


def log_dataset(c: MlflowClient, run: str, name: str, source: str, digest: str, context: str) -> None:
    """The dataset as a run input (source URI and content digest), so a model version traces back to its data."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    kind = "s3" if source.startswith("s3://") else "local"
    ds = Dataset(name=name, digest=digest, source_type=kind, source=json.dumps({"uri": source}))
    c.log_inputs(run, datasets=[DatasetInput(ds, [InputTag("mlflow.data.context", context)])])


def shown(uri: str) -> str:
    """A tracking URI for logs, texts and artifacts: its password masked."""
    return redact_url(uri)


def run_url(uri: str, exp: str, run: str) -> str:
    """Where to open the run: the server's page (no password in it), or the `mlflow ui` address for a local store."""
    base = shown(uri) if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{exp}/runs/{run}"
