"""Resolve an action's parent (MLflow run id, registered model alias/version, or path) to a local model file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.store.artifact.utils.models import get_model_name_and_version
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from oneformer.data.staging import is_remote, stage
from oneformer.errors import CheckpointError
from oneformer.model.checkpoint import resolve
from oneformer.secrets import redact_text
from tasks import tracking
from tasks.staging import s3_options, transient

Kind = Literal["checkpoint", "onnx", "int8"]
# Where the pipeline logs each kind in its MLflow run.
RUN_ARTIFACTS = {"checkpoint": "checkpoint", "onnx": "export/model.onnx", "int8": "quantize/model.int8.onnx"}
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _pick(folder: Path, kind: Kind, parent: str) -> Path:
    """The file of the wanted kind inside a downloaded artifact folder."""
    if folder.is_file():
        return folder
    pattern = "*.pth" if kind == "checkpoint" else ("*.int8.onnx" if kind == "int8" else "*.onnx")
    found = sorted(p for p in folder.rglob(pattern) if kind != "onnx" or not p.name.endswith(".int8.onnx"))
    if not found:
        raise CheckpointError(f"parent {parent}: no {kind} file ({pattern}) among its artifacts in {folder}")
    return found[0]


def missing_local(parent: str | None) -> str | None:
    """Why a parent given as a local path cannot be used (it does not exist), found before a flow writes anything;
    MLflow and remote parents are looked up when they are downloaded."""
    if not parent or parent.startswith("models:/") or RUN_ID.match(parent) or is_remote(parent):
        return None
    path = Path(parent.removeprefix("file://")).expanduser()
    return None if path.exists() else f"parent {parent}: no such file, MLflow run id or models:/ URI"


@task(name="resolve-parent", task_run_name="resolve {kind} from {parent}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=5, retry_condition_fn=transient)  # a parent that does not exist is not retried
def resolve_parent(parent: str, kind: Kind, tracking_uri: str, dest: str, s3_secret_block: str | None = None) -> str:
    """A local file for `parent`: models:/name@alias or models:/name/version, an MLflow run id, or a path/URI."""
    logger = get_run_logger()
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    uris = {"dst_path": str(out), "tracking_uri": tracking_uri}
    try:
        if parent.startswith("models:/"):
            # Resolved with this client (MLflow's own download resolves models:/ through its process-wide registry
            # URI), by MLflow's parser: name/version, name@alias, name/stage, name/latest, and a path below them.
            base, below = ModelsArtifactRepository.split_models_uri(parent)
            c = tracking.client(tracking_uri)  # only here: a client opens (and may create) the tracking store
            name, version = get_model_name_and_version(c, base)
            if kind == "int8":  # the INT8 file is an artifact of the pipeline run that registered the version
                run_id = c.get_model_version(name, version).run_id
                local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RUN_ARTIFACTS[kind],
                                                                 **uris))
            else:
                source = c.get_model_version_download_uri(name, version).rstrip("/")
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/{below}".rstrip("/"),
                                                                 **uris))
        elif RUN_ID.match(parent):
            local = Path(mlflow.artifacts.download_artifacts(run_id=parent, artifact_path=RUN_ARTIFACTS[kind], **uris))
        else:
            local = stage(parent, "parent", s3_options(s3_secret_block)) if is_remote(parent) or \
                Path(parent).exists() else Path(parent)
            if not local.exists():
                raise CheckpointError(f"parent {parent}: no such file, MLflow run id or models:/ URI")
            if local.is_dir() and kind == "checkpoint":
                return str(resolve("best", local, "parent"))
    except MlflowException as exc:
        raise CheckpointError(f"parent {parent}: not found in MLflow at {tracking.shown(tracking_uri)} "
                              f"({redact_text(exc.message)})") from None
    path = _pick(local, kind, parent)
    logger.info("parent %s -> %s", parent, path)
    return str(path)
