"""MLflow model registry: an ONNX model version with its checkpoint, tags, a model card, and the alias rules."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow.onnx
import numpy as np
import onnx
from mlflow.entities import LoggedModel, LoggedModelOutput, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.card import ModelCard
from tasks.results import Registration


def signature(onnx_file: Path) -> ModelSignature:
    """Input and output tensor specs read from the ONNX graph (dynamic axes become -1)."""
    model = onnx.load(str(onnx_file), load_external_data=False)

    def specs(values: Any) -> Schema:
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(TensorSpec(np.dtype(dtype), shape, v.name))
        return Schema(out)

    return ModelSignature(inputs=specs(model.graph.input), outputs=specs(model.graph.output))


def champion_params(c: MlflowClient, name: str) -> tuple[str, dict[str, Any]] | None:
    """The champion's tuned AutoML parameters (to warm-start a new study), or None without a champion."""
    try:
        mv = c.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    params = json.loads(mv.tags.get("automl_params") or "{}")
    return (f"{name} v{mv.version}", params) if params else None


def registered_before(c: MlflowClient, card: ModelCard) -> str | None:
    """The version this run already registered for this checkpoint (a resumed run registers it once)."""
    for mv in c.search_model_versions(f"name = '{card.name}'"):
        if card.run_key and mv.tags.get("run_key") == card.run_key and \
                mv.tags.get("checkpoint_sha256") == card.checkpoint_sha256:
            return str(mv.version)
    return None


def log_onnx_model(c: MlflowClient, experiment: str, run_id: str, onnx_file: Path, checkpoint: Path) -> LoggedModel:
    """The ONNX flavour (its signature, the checkpoint beside it) as the run's logged model "model", with what
    mlflow.onnx.log_model records: the run's params, the run's output link, its step-0 metrics and the MLmodel ids.
    Written with the client, because the fluent log_model needs MLflow's process-wide tracking URI."""
    run = c.get_run(run_id)
    model = c.create_logged_model(experiment, name="model", source_run_id=run_id, model_type="onnx",
                                  params=dict(run.data.params))
    try:
        with tempfile.TemporaryDirectory(prefix="oneformer-model-") as tmp:
            local = Path(tmp) / "model"
            ids = Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model.model_id,
                        model_id=model.model_id)
            mlflow.onnx.save_model(onnx.load(str(onnx_file)), str(local), mlflow_model=ids,
                                   signature=signature(onnx_file), extra_files=[str(checkpoint)],
                                   onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False,
                                   # the flavour's own list: inferring it runs a subprocess (2 s) to find the same
                                   pip_requirements=mlflow.onnx.get_default_pip_requirements())
            c.log_model_artifacts(model.model_id, str(local))
        c.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id, run_id=run_id)
                   for key in run.data.metrics for m in c.get_metric_history(run_id, key) if m.step == 0]
        if metrics:
            c.log_batch(run_id, metrics=metrics)
    except BaseException:
        c.finalize_logged_model(model.model_id, "FAILED")
        raise
    return c.finalize_logged_model(model.model_id, "READY")


@task(name="register", task_run_name="register {card.name}", cache_policy=NO_CACHE)
def register(tracking_uri: str, experiment: str, card: ModelCard, onnx_file: str) -> Registration:
    """Log the ONNX model (with the checkpoint) in the run, register it, tag it, and move the aliases."""
    logger = get_run_logger()
    c = tracking.client(tracking_uri)
    if (done := registered_before(c, card)) is not None:
        aliases = list(c.get_model_version(card.name, done).aliases)
        logger.info("%s v%s was registered by this run already (run %s); not registering it again", card.name, done,
                    card.run_key)
        return Registration(name=card.name, version=done, aliases=aliases, model_uri=f"models:/{card.name}/{done}",
                            champion=done if "champion" in aliases else None, promoted="champion" in aliases,
                            verdict="registered by this run before it was resumed")
    model = log_onnx_model(c, experiment, card.run_id, Path(onnx_file), Path(card.selection.checkpoint))
    try:
        c.create_registered_model(card.name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # The source is the logged model's artifact location, not models:/<model id>: MLflow's SQL registry resolves
    # that URI through the process-wide tracking URI, which this client does not set.
    version = str(c.create_model_version(card.name, model.artifact_location, run_id=card.run_id, tags=card.tags(),
                                         model_id=model.model_id).version)
    card = card.with_version(version)
    c.update_model_version(card.name, version, description=card.markdown())
    c.set_registered_model_alias(card.name, "candidate", version)
    promote, why = card.promotion()
    current = _champion_version(c, card.name)
    expected = card.champion.version if card.champion else None
    if promote and current != expected:  # another run moved it since this one scored it
        promote, why = False, f"the champion changed to v{current} while this run compared against v{expected}"
    if promote:
        c.set_registered_model_alias(card.name, "champion", version)
        logger.info("%s v%s is the champion: %s", card.name, version, why)
    else:
        logger.info("%s v%s stays a candidate: %s", card.name, version, why)
    aliases = c.get_model_version(card.name, version).aliases
    return Registration(name=card.name, version=version, aliases=list(aliases),
                        model_uri=f"models:/{card.name}/{version}", champion=version if promote else current,
                        promoted=promote, verdict=why)


def _champion_version(c: MlflowClient, name: str) -> str | None:
    try:
        return str(c.get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None
