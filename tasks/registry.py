"""MLflow model registry: a version people can use (images in, segments out: tasks/served_model.py) with its ONNX
files and checkpoint, tags, a model card, and the alias rules."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import onnx
from mlflow.entities import LoggedModel, LoggedModelOutput, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import DataType, ParamSchema, ParamSpec
from PIL import Image
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from oneformer.runtime.choice import report_rows, version_report
from oneformer.runtime.predictor import META_KEY, ModelInfo
from oneformer.runtime.segment import PREDICT_PARAMS
from tasks import tracking
from tasks.card import ModelCard
from tasks.results import Registration


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


def registered_checkpoint(c: MlflowClient, card: ModelCard) -> str | None:
    """The finished version another run registered from this very checkpoint file (same sha256), if any: a night
    whose best trial is unchanged registers nothing new."""
    versions = [mv for mv in c.search_model_versions(f"name = '{card.name}'")
                if mv.tags.get("checkpoint_sha256") == card.checkpoint_sha256
                and mv.tags.get(COMPLETE_TAG) == "complete"]
    return str(min(int(mv.version) for mv in versions)) if versions else None


def unchanged(c: MlflowClient, card: ModelCard, version: str) -> Registration:
    """What a run whose checkpoint is version `version` already reports: the champion is unchanged."""
    current = _champion_version(c, card.name)
    mv = c.get_model_version(card.name, version)
    same = (f"v{version}, the champion, is this checkpoint" if current == version else
            f"this checkpoint is v{version} ({', '.join(mv.aliases) or 'no alias'})")
    verdict = (f"champion unchanged: {f'v{current}' if current else 'none'} ({same}: sha256 {card.checkpoint_sha256}, "
               f"registered by MLflow run {mv.run_id}); nothing new registered")
    get_run_logger().info("%s: %s", card.name, verdict)
    return Registration(name=card.name, version=version, aliases=list(mv.aliases),
                        model_uri=f"models:/{card.name}/{version}", champion=current, promoted=False,
                        verdict=verdict, new=False)


SERVED_MODEL = Path(__file__).with_name("served_model.py")  # the pyfunc code logged with every version
DESCRIPTION = (
    "OneFormer universal segmentation, trained, tuned and converted by the oneformer pipeline. Every version is a "
    "`candidate`; `champion` is the best on the same test images whose INT8 gate passed. Use it with "
    "`mlflow.pyfunc.load_model('models:/{name}@champion').predict(['image.jpg'], "
    "params={{'task': 'semantic', 'backend': 'auto', 'precision': 'auto'}})`: paths, encoded image bytes or HxWx3 "
    "uint8 arrays in; a label map, a segment map and named segments per image out, each with the `model` that "
    "answered (e.g. openvino-int8). auto is the fastest backend (onnxruntime, openvino) and file (FP32, INT8 where "
    "its gate passed) whose parity passed, measured at registration (the version's backends.json); name a backend "
    "or precision (fp32, bf16, int8) to choose yourself. `mlflow models serve -m models:/{name}@champion` "
    "serves the same over HTTP (images as base64). Each version's card holds its metrics and lineage.")


def signature() -> ModelSignature:
    """The two predict params; no input schema, because MLflow's column and tensor schemas each refuse one of the
    image forms the model takes (a path or bytes, or one HxWx3 array): served_model.images_of reads them all."""
    return ModelSignature(inputs=None,
                          params=ParamSchema([ParamSpec(k, DataType.string, v) for k, v in PREDICT_PARAMS.items()]))


def serving_config(card: ModelCard, onnx_file: Path) -> dict[str, Any]:
    """What the served model needs besides its files: the graph's task and size and the post-processing settings."""
    meta = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    if META_KEY not in meta:
        raise ValueError(f"{onnx_file} has no oneformer metadata: export it with `oneformer export`")
    info = ModelInfo.from_json(meta[META_KEY], str(onnx_file))
    test = card.spec.get("model", {}).get("test", {})
    return {"task": info.task, "image_size": info.input_size,
            "thresholds": {"object_mask_threshold": test.get("object_mask_threshold", 0.8),
                           "overlap_threshold": test.get("overlap_threshold", 0.8),
                           "topk": test.get("test_topk_per_image", 100)}}


def example_image(config: dict[str, Any]) -> bytes:
    """A PNG of the graph's input size: the model's input example (MLflow checks the model predicts on it)."""
    h, w = config["image_size"] or (64, 64)
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def requirements() -> list[str]:
    """The served model's pip requirements, pinned to what trained it (inferring them runs a 2 s subprocess);
    OpenVINO where it is installed, since the backends report may choose it."""
    names = ["mlflow", "onnxruntime", "onnx", "numpy", "pandas", "pillow", "torch", "transformers", "pydantic",
             "pyyaml", "oneformer-pipeline"]
    if importlib.util.find_spec("openvino") is not None:
        names.append("openvino")
    return [f"{n}=={importlib.metadata.version(n)}" for n in names]


def backends_report(card: ModelCard, files: dict[str, Path]) -> dict[str, Any]:
    """Each ONNX file of the version on every backend this machine runs (latency, parity against ONNX Runtime):
    what the served model's backend/precision auto picks from. The INT8 file is measured only where the quantize
    report says its gate passed."""
    int8 = card.int8
    return version_report({k: v for k, v in files.items() if k in ("fp32", "int8")},
                          int8_passed=int8 is not None and int8.passed, int8_verdict=int8.verdict if int8 else "")


def backend_metrics(report: dict[str, Any]) -> dict[str, float]:
    """A few run metrics from a backends report: latency, images/s and parity agreement per backend."""
    out = {}
    for _, candidate, row in report_rows(report):
        tag = candidate.name.replace("-", "_")
        if row.get("ms") is not None:
            out[f"backend_{tag}_ms"] = float(row["ms"])
            out[f"backend_{tag}_images_per_s"] = float(row["images_per_s"] or 0.0)
        if "parity" in row:
            out[f"backend_{tag}_agreement"] = float(row["parity"]["agreement"])
    return out


def log_backends(c: MlflowClient, run_id: str, report: dict[str, Any], local: Path) -> None:
    """The backends report as a run artifact (backends/backends.json) and its figures as run metrics."""
    tracking.log_run_artifact(c, run_id, local, "backends")
    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in backend_metrics(report).items()])


def log_served_model(c: MlflowClient, experiment: str, run_id: str, card: ModelCard, files: dict[str, Path]
                     ) -> tuple[LoggedModel, dict[str, Any]]:
    """The version's pyfunc model (served_model.py with its ONNX files, checkpoint and backends report) as the run's
    logged model "model", with what log_model records: the run's params, the run's output link, its step-0 metrics
    and the MLmodel ids; the backends report also goes to the run (artifact and metrics). Written with the client,
    because the fluent log_model needs MLflow's process-wide tracking URI. Returns the model and the report."""
    logger = get_run_logger()
    logger.info("measuring the backends of %s (latency and parity of each file on each runtime here)",
                ", ".join(p.name for k, p in files.items() if k != "checkpoint"))
    report = backends_report(card, files)
    chosen = report["chosen"]
    logger.info("backends: %s answers by default (%s)", chosen["backend"], ", ".join(
        f"{candidate.name} {row['ms']} ms{'' if row.get('passed') else ' [parity failed]'}"
        for _, candidate, row in report_rows(report) if row.get("ms") is not None))
    with tempfile.TemporaryDirectory(prefix="oneformer-backends-") as tmp:  # first: the model page shows them too
        local = Path(tmp) / "backends.json"
        local.write_text(json.dumps(report, indent=1))
        log_backends(c, run_id, report, local)
    run = c.get_run(run_id)
    model = c.create_logged_model(experiment, name="model", source_run_id=run_id, model_type="oneformer",
                                  params=dict(run.data.params))
    try:
        with tempfile.TemporaryDirectory(prefix="oneformer-model-") as tmp:
            config = serving_config(card, files["fp32"])
            config_file = Path(tmp) / "serving.json"
            config_file.write_text(json.dumps(config, indent=1))
            report_file = Path(tmp) / "backends.json"
            report_file.write_text(json.dumps(report, indent=1))
            local = Path(tmp) / "model"
            ids = Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model.model_id,
                        model_id=model.model_id)
            mlflow.pyfunc.save_model(str(local), python_model=str(SERVED_MODEL), mlflow_model=ids,
                                     artifacts={"config": str(config_file), "backends": str(report_file),
                                                **{k: str(v) for k, v in files.items()}},
                                     signature=signature(), input_example=[example_image(config)],
                                     pip_requirements=requirements())
            c.log_model_artifacts(model.model_id, str(local))
        c.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id, run_id=run_id)
                   for key in run.data.metrics for m in c.get_metric_history(run_id, key) if m.step == 0]
        if metrics:
            c.log_batch(run_id, metrics=metrics)
    except BaseException:
        c.finalize_logged_model(model.model_id, "FAILED")
        raise
    return c.finalize_logged_model(model.model_id, "READY"), report


COMPLETE_TAG = "registration"  # set last: a version without it was cut off mid-registration and is finished later


@task(name="register", task_run_name="register {card.name}", cache_policy=NO_CACHE)
def register(tracking_uri: str, experiment: str, card: ModelCard, onnx_file: str) -> Registration:
    """Log the served model in the run, register it, tag and describe it, and move the aliases; a registration
    that broke off (the tracking server went away) is finished by the rerun, never made twice."""
    c = tracking.client(tracking_uri)
    try:
        return _register(c, experiment, card, onnx_file)
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0][:500]
        raise RuntimeError(f"registering {card.name} at {tracking.shown(tracking_uri)} failed: {first}. Nothing is "
                           f"half-registered: rerun the pipeline with resume=True and this version is registered "
                           f"once") from exc


def _register(c: MlflowClient, experiment: str, card: ModelCard, onnx_file: str) -> Registration:
    logger = get_run_logger()
    done = registered_before(c, card)
    if done is not None and c.get_model_version(card.name, done).tags.get(COMPLETE_TAG) == "complete":
        aliases = list(c.get_model_version(card.name, done).aliases)
        logger.info("%s v%s was registered by this run already (run %s); not registering it again", card.name, done,
                    card.run_key)
        return Registration(name=card.name, version=done, aliases=aliases, model_uri=f"models:/{card.name}/{done}",
                            champion=done if "champion" in aliases else None, promoted="champion" in aliases,
                            verdict="registered by this run before it was resumed")
    if done is None and (same := registered_checkpoint(c, card)) is not None:
        return unchanged(c, card, same)
    if done is None:
        files = {"fp32": Path(onnx_file), "checkpoint": Path(card.selection.checkpoint)}
        if card.int8 is not None and card.int8.file:
            files["int8"] = Path(card.int8.file)
        model, backends = log_served_model(c, experiment, card.run_id, card, files)
        serving = {"serving_backend": backends["chosen"]["backend"], "serving_file": backends["chosen"]["file"]}
        try:
            c.create_registered_model(card.name, description=DESCRIPTION.format(name=card.name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # The source is the logged model's artifact location, not models:/<model id>: MLflow's SQL registry
        # resolves that URI through the process-wide tracking URI, which this client does not set.
        version = str(c.create_model_version(card.name, model.artifact_location, run_id=card.run_id,
                                             tags={**card.tags(), **serving}, model_id=model.model_id).version)
    else:
        version = done
        logger.info("%s v%s: finishing the registration an earlier try of this run began", card.name, version)
    card = card.with_version(version)
    c.update_model_version(card.name, version, description=card.markdown())
    c.set_registered_model_alias(card.name, "candidate", version)
    promote, why = card.promotion()
    current = _champion_version(c, card.name)
    expected = card.champion.version if card.champion else None
    if promote and current not in (expected, version):  # another run moved it since this one scored it
        promote, why = False, f"the champion changed to v{current} while this run compared against v{expected}"
    if promote:
        c.set_registered_model_alias(card.name, "champion", version)
        logger.info("%s v%s is the champion: %s", card.name, version, why)
    else:
        logger.info("%s v%s stays a candidate: %s", card.name, version, why)
    c.set_model_version_tag(card.name, version, COMPLETE_TAG, "complete")
    aliases = c.get_model_version(card.name, version).aliases
    return Registration(name=card.name, version=version, aliases=list(aliases),
                        model_uri=f"models:/{card.name}/{version}", champion=version if promote else current,
                        promoted=promote, verdict=why)


def _champion_version(c: MlflowClient, name: str) -> str | None:
    try:
        return str(c.get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None
