"""The whole pipeline as a team runs it: synthetic data in an S3 bucket (an S3 server on 127.0.0.1), tracking and
registry on an MLflow server over HTTP with a PostgreSQL backend store and its artifacts proxied to S3; then the
next night's run, the action flows taking its run and its registered versions as parents, and the registered
model loaded back by alias. (SQLite, the default store, is what test_nights, test_kill and `make demo` use.)"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pytest
import torch
import yaml
from logs import LogLines
from mlflow.tracking import MlflowClient
from servers import mlflow_command, new_database, s3_env

from flows.params import Tracking
from flows.pipeline import pipeline
from tasks.automl import open_study, rdb_storage
from tasks.sources import DataSources

pytestmark = pytest.mark.slow
SECRET = "s3cr3t-never-logged-7f3a"


def upload_tree(client, folder: Path, bucket: str, prefix: str) -> None:  # noqa: ANN001 - boto3 client
    """Every file under `folder` to s3://bucket/prefix/<relative path>, as a user's bucket holds it."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


def _artifacts(c: MlflowClient, run: str, path: str = "") -> set[str]:
    out = set()
    for f in c.list_artifacts(run, path):
        out |= _artifacts(c, run, f.path) if f.is_dir else {f.path}
    return out


@pytest.fixture(scope="module")
def bucket(small_synth: Path, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The synthetic dataset in TAO's bucket layout on the session's S3 server (over HTTP on 127.0.0.1)."""
    import boto3

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**s3_env(moto_endpoint, SECRET), "ONEFORMER_CACHE": str(tmp_path_factory.mktemp("cache"))}.items():
            mp.setenv(k, v)
        client = boto3.client("s3", endpoint_url=moto_endpoint)
        client.create_bucket(Bucket="pipeline")
        for name in ("train", "eval", "inference", "calibration"):
            upload_tree(client, small_synth.parent / name, "pipeline", f"bucket/{name}")
        yield DataSources(**{n: f"s3://pipeline/bucket/{n}" for n in ("train", "eval", "inference", "calibration")})


@pytest.fixture(scope="module")
def server(postgres_url: str, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """`mlflow server` as teams run it: PostgreSQL behind it, artifacts proxied to s3://mlflow-artifacts."""
    import boto3

    store = new_database(postgres_url, "mlflow_pipeline")
    env = s3_env(moto_endpoint, SECRET)
    boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                 region_name="us-east-1").create_bucket(Bucket="mlflow-artifacts")
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    with mlflow_command(["server", "--backend-store-uri", store, "--artifacts-destination", "s3://mlflow-artifacts",
                         "--workers", "1"], "/health", log, {**env, "MLFLOW_S3_ENDPOINT_URL": moto_endpoint}) as url:
        yield {"url": url, "log": log}


@pytest.fixture(scope="module")
def first(bucket: DataSources, server: dict, small_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One pipeline run from S3 with two AutoML trials, tracked on the MLflow server."""
    classes = yaml.safe_load(small_synth.read_text())["model"]["sem_seg_head"]["num_classes"]
    results = tmp_path_factory.mktemp("pipeline") / "results"
    overrides = {"model.sem_seg_head.num_classes": classes, "train.num_epochs": 3, "export.input_height": 64,
                 "export.input_width": 64, "quantize.num_calibration_images": 2, "automl.sampler": "random"}
    handler = LogLines()
    logging.getLogger().addHandler(handler)
    before = {"mlflow_uri": mlflow.get_tracking_uri(), "registry_uri": mlflow.get_registry_uri(),
              "environment": dict(os.environ), "matmul": torch.get_float32_matmul_precision()}
    try:
        result = pipeline(spec="specs/smoke.yaml", overrides=overrides, sources=bucket, n_trials=2,
                          results_dir=str(results), model_name="synthetic",
                          tracking_config=Tracking(tracking_uri=server["url"]))
    finally:
        logging.getLogger().removeHandler(handler)
    after = {"mlflow_uri": mlflow.get_tracking_uri(), "registry_uri": mlflow.get_registry_uri(),
             "environment": dict(os.environ), "matmul": torch.get_float32_matmul_precision()}
    return {**result, "results": results, "overrides": overrides, "log": "\n".join(handler.lines),
            "process_state": (before, after)}


def test_pipeline_from_s3_registers_a_version_with_artifacts(first: dict, server: dict, moto_endpoint: str) -> None:
    results = first["results"]
    reg = first["registered"]
    assert reg["version"] == "1" and set(reg["aliases"]) == {"candidate", "champion"}
    c = MlflowClient(first["tracking_uri"], registry_uri=first["tracking_uri"])
    assert first["tracking_uri"] == server["url"] and not (results / "mlflow.db").exists()
    version = c.get_model_version_by_alias("synthetic", "champion")
    assert str(version.version) == "1"
    assert float(version.tags["mIoU"]) == pytest.approx(first["metrics"]["mIoU"], abs=1e-6)
    assert {"spec_digest", "data_digest", "prefect_flow_run_id", "int8_agreement", "int8_gate", "int8_miou_drop",
            "automl_params", "run_key"} <= set(version.tags)
    for section in ("## Data", "### Per-class IoU", "## AutoML", "## Conversion parity", "ONNX FP32 -> INT8"):
        assert section in version.description
    parent = first["mlflow_run_id"]
    files = _artifacts(c, parent)
    for expected in ("export/model.onnx", "export/model.onnx.report.json", "quantize/model.int8.onnx",
                     "quantize/model.int8.onnx.report.json", "evaluate/metrics.json", "evaluate/per_class_iou.csv",
                     "charts/per_class_iou.png", "charts/optimization_history.png", "spec/spec.yaml", "summary.md"):
        assert expected in files, expected
    assert any(f.startswith("overlays/") and f.endswith(".png") for f in files)
    run = c.get_run(parent)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # the server's store, not this machine's disk
    import boto3

    env = s3_env(moto_endpoint, SECRET)
    stored = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    keys = {o["Key"] for page in stored.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
            for o in page.get("Contents", [])}
    assert any(k.endswith(f"{parent}/artifacts/export/model.onnx") for k in keys), sorted(keys)[:20]
    assert not (results / "mlartifacts").exists()
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_mIoU"] == pytest.approx(first["metrics"]["mIoU"])
    assert run.data.params["train.num_epochs"] == "3"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train", "eval"}
    trials = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(trials) == 2 and all(len(c.get_metric_history(t.info.run_id, "mIoU")) >= 1 for t in trials)
    before, after = first["process_state"]  # MLflow's process-wide URIs, the environment and torch's settings
    changed = {k for k in before["environment"].keys() | after["environment"].keys()
               if before["environment"].get(k) != after["environment"].get(k)} - {"_MLFLOW_TELEMETRY_SESSION_ID"}
    assert changed == set() and {k: v for k, v in after.items() if k != "environment"} == \
        {k: v for k, v in before.items() if k != "environment"}
    everything = json.dumps([run.data.params, run.data.tags, version.tags]) + first["log"] + \
        (results / "summary.md").read_text() + (results / "spec.yaml").read_text()
    assert SECRET not in everything


def test_the_registered_version_predicts_on_the_images_it_was_made_for(first: dict, small_synth: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.data.readers import list_images, read_image
    from oneformer.data.staging import stage
    from oneformer.runtime import open_predictor
    from oneformer.runtime.segment import segment

    monkeypatch.setenv("MLFLOW_TRACKING_URI", first["tracking_uri"])  # as a user points MLflow at the server
    model = mlflow.pyfunc.load_model("models:/synthetic@champion")
    images = list_images(stage(str(small_synth.parent / "inference" / "images.tar.gz"), "inference"), "inference")
    out = model.predict([str(p) for p in images], params={"precision": "int8"})
    backend, precision = out[0]["model"].rsplit("-", 1)  # says which runtime answered: the fastest whose parity held
    assert backend in ("onnxruntime", "openvino") and precision == "int8"
    int8 = open_predictor(first["artifacts"]["int8"], backend=backend)  # the pipeline's own INT8 file answers the same
    for path, result in zip(images, out, strict=True):
        image = read_image(path)
        assert result["model"] == f"{backend}-int8" and result["label_map"].shape == image.shape[:2]
        assert (result["label_map"] == segment(int8, image, "semantic", (64, 64)).labels).all()
        assert result["segments"] and all(isinstance(s["category"], str) for s in result["segments"])


def test_next_run_trains_new_trials_and_the_champion_gate_rescored(first: dict, bucket: DataSources,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    results, overrides = first["results"], first["overrides"]
    c = MlflowClient(first["tracking_uri"], registry_uri=first["tracking_uri"])
    caplog.set_level(logging.INFO)
    study = open_study_for(results, first)
    done = {t.number: t.datetime_complete for t in study.trials}
    second = pipeline(spec="specs/smoke.yaml", overrides=overrides, sources=bucket, n_trials=1,
                      results_dir=str(results), model_name="synthetic",
                      tracking_config=Tracking(tracking_uri=first["tracking_uri"]))

    assert "staging: downloading" not in caplog.text and "staging: reusing" in caplog.text
    study = open_study_for(results, second)  # the same data and spec: the same study, one new trial
    assert len(study.trials) == 3
    assert {t.number: t.datetime_complete for t in study.trials if t.number in done} == done  # not repeated
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 3  # nothing re-proposed
    folders = sorted(p.relative_to(results / "automl").as_posix() for p in (results / "automl").glob("*/trial_*"))
    assert folders == [f"{study.study_name}/trial_{n:03d}" for n in range(3)]
    v2 = second["registered"]
    if second["checkpoint"] == first["checkpoint"]:  # the new trial did not beat: nothing new is registered
        assert not v2["new"] and v2["version"] == first["registered"]["version"]
        assert v2["verdict"].startswith("champion unchanged: v1")
        return
    assert v2["new"] and v2["version"] == "2"
    version = c.get_model_version("synthetic", v2["version"])
    assert "candidate" in v2["aliases"] and version.tags["champion_compared"] == "1"
    champion_score = float(version.tags["champion_mIoU_same_test"])  # v1 re-scored on this run's test images
    assert champion_score == pytest.approx(first["metrics"]["mIoU"], abs=1e-6)  # (the same images here)
    moved = v2["version"] if round(second["metrics"]["mIoU"], 6) >= round(champion_score, 6) and \
        version.tags["int8_gate"] == "passed" else "1"
    assert str(c.get_model_version_by_alias("synthetic", "champion").version) == moved
    assert "## Champion gate" in version.description and "champion v1" in version.description


def test_action_flows_take_a_run_id_or_a_registered_model_as_parent(first: dict, bucket: DataSources,
                                                                    tmp_path: Path) -> None:
    from flows.evaluate import evaluate_flow
    from flows.export import export_flow
    from flows.gen_trt_engine import gen_trt_engine_flow
    from flows.inference import inference_flow
    from flows.quantize import quantize_flow
    from flows.train import train_flow
    from oneformer.errors import CheckpointError

    common = {"spec": "specs/smoke.yaml", "overrides": first["overrides"], "sources": bucket,
              "results_dir": str(tmp_path / "actions"), "tracking_config": Tracking(tracking_uri=first["tracking_uri"])}
    run_id = first["mlflow_run_id"]

    exported = export_flow(parent=run_id, **common)
    assert exported["agreement"] == 1.0 and Path(exported["onnx_file"]).is_file()
    int8 = quantize_flow(parent="models:/synthetic/1", model_kind="onnx", **common)
    assert int8["agreement"] >= 0.9 and int8["miou_drop"] is not None and "verdict" in int8
    metrics = evaluate_flow(parent="models:/synthetic@candidate", model_kind="int8", **common)
    assert 0 <= metrics["mIoU"] <= 1 and metrics["num_images"] == 4
    predicted = inference_flow(parent=run_id, **common)
    assert predicted["images"] == 2
    engine = gen_trt_engine_flow(parent=run_id, precision="fp16", **common)
    assert "engine_file" in engine or "TensorRT" in engine["skipped"]
    one_epoch = {**common, "overrides": {**first["overrides"], "train.num_epochs": 1}}
    trained = train_flow(parent="models:/synthetic@candidate", **one_epoch)
    assert trained["epochs"] == 1 and trained["best"] is not None
    c = MlflowClient(first["tracking_uri"])
    runs = c.search_runs([c.get_experiment_by_name("oneformer").experiment_id], f"tags.parent = '{run_id}'")
    assert {r.data.tags["action"] for r in runs} == {"export", "inference", "gen_trt_engine"}
    with pytest.raises(CheckpointError, match="models:/synthetic@nope"):
        evaluate_flow(parent="models:/synthetic@nope", **common)


def open_study_for(results: Path, result: dict):  # noqa: ANN201 - an optuna Study
    """The pipeline's study, reopened from its SQLite storage."""
    from oneformer.spec import load_spec

    spec = load_spec(results / "spec.yaml")
    name = MlflowClient(result["tracking_uri"]).get_run(result["mlflow_run_id"]).data.tags["optuna.study"]
    return open_study(spec, name, rdb_storage(spec))
