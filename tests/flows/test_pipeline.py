"""The whole pipeline on synthetic data served from an S3 server on 127.0.0.1, then a rerun that resumes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

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


def test_pipeline_from_s3_registers_and_rerun_resumes(s3, small_synth: Path, tmp_path: Path,  # noqa: ANN001
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    data = small_synth.parent
    for name in ("train", "eval", "inference", "calibration"):
        upload_tree(s3, data / name, "data", f"bucket/{name}")
    sources = DataSources(train="s3://data/bucket/train", eval="s3://data/bucket/eval",
                          inference="s3://data/bucket/inference", calibration="s3://data/bucket/calibration")
    classes = yaml.safe_load(small_synth.read_text())["model"]["sem_seg_head"]["num_classes"]
    results = tmp_path / "results"
    overrides = {"model.sem_seg_head.num_classes": classes, "train.num_epochs": 3, "export.input_height": 64,
                 "export.input_width": 64, "quantize.num_calibration_images": 2, "automl.sampler": "random"}
    caplog.set_level(logging.INFO)

    first = pipeline(spec="specs/smoke.yaml", overrides=overrides, sources=sources, n_trials=2,
                     results_dir=str(results), model_name="synthetic")

    reg = first["registered"]
    assert reg["version"] == "1" and set(reg["aliases"]) == {"candidate", "champion"}
    c = MlflowClient(first["tracking_uri"], registry_uri=first["tracking_uri"])
    assert first["tracking_uri"] == f"sqlite:///{results.resolve()}/mlflow.db"
    version = c.get_model_version_by_alias("synthetic", "champion")
    assert str(version.version) == "1"
    assert float(version.tags["mIoU"]) == pytest.approx(first["metrics"]["mIoU"], abs=1e-6)
    assert {"spec_digest", "data_digest", "prefect_flow_run_id", "int8_agreement"} <= set(version.tags)
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
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_mIoU"] == pytest.approx(first["metrics"]["mIoU"])
    assert run.data.params["train.num_epochs"] == "3"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train", "eval"}
    trials = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(trials) == 2 and all(len(c.get_metric_history(t.info.run_id, "mIoU")) >= 1 for t in trials)
    everything = json.dumps([run.data.params, run.data.tags, version.tags]) + caplog.text + \
        (results / "summary.md").read_text() + (results / "spec.yaml").read_text()
    assert SECRET not in everything

    caplog.clear()
    study = open_study_for(results, first)
    done = {t.number: t.datetime_complete for t in study.trials}
    second = pipeline(spec="specs/smoke.yaml", overrides=overrides, sources=sources, n_trials=3,
                      results_dir=str(results), model_name="synthetic")

    assert "staging: downloading" not in caplog.text and "staging: reusing" in caplog.text
    study = open_study_for(results, second)
    assert len(study.trials) == 3
    assert {t.number: t.datetime_complete for t in study.trials if t.number in done} == done  # not repeated
    assert sorted(p.name for p in (results / "automl").glob("trial_*")) == ["trial_000", "trial_001", "trial_002"]
    v2 = second["registered"]
    assert v2["version"] == "2" and "candidate" in v2["aliases"]
    champion = str(c.get_model_version_by_alias("synthetic", "champion").version)
    expected = "2" if second["metrics"]["mIoU"] >= first["metrics"]["mIoU"] else "1"
    assert champion == expected


def open_study_for(results: Path, result: dict):  # noqa: ANN201 - an optuna Study
    """The pipeline's study, reopened from its SQLite storage."""
    from oneformer.spec import load_spec

    spec = load_spec(results / "spec.yaml")
    return open_study(spec, "synthetic", rdb_storage(spec))
