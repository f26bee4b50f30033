"""The pipeline killed (SIGKILL) mid-study and run again: the interrupted trial is retried from its own latest
checkpoint, it counts once, and the rerun finishes and registers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from flows.params import Tracking
from flows.pipeline import pipeline
from oneformer.data.synth import generate
from oneformer.spec import load_spec
from tasks.automl import open_study, rdb_storage
from tasks.sources import DataSources

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_a_pipeline_killed_mid_study_resumes_its_trial(tmp_path: Path) -> None:
    data = generate(tmp_path / "data", train=8, val=4, size=64, seed=5).parent
    classes = yaml.safe_load((data / "spec.yaml").read_text())["model"]["sem_seg_head"]["num_classes"]
    results, uri = tmp_path / "results", f"sqlite:///{tmp_path}/results/mlflow.db"
    overrides = {"model.sem_seg_head.num_classes": classes, "train.num_epochs": 4, "export.input_height": 64,
                 "export.input_width": 64, "automl.sampler": "random"}
    command = [sys.executable, "-m", "flows.pipeline", "--spec", "specs/smoke.yaml", "--results-dir", str(results),
               "--mlflow-uri", uri, "--train", str(data / "train"), "--eval", str(data / "eval"), "--trials", "1",
               *(f"{k}={v}" for k, v in overrides.items())]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # its own ephemeral API, as a separate `python -m flows.pipeline` has
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, epoch0 = time.monotonic() + 300, []
    while not epoch0:  # kill it once the trial has its first checkpoint and trains on
        epoch0 = sorted(results.glob("automl/*/trial_000/train/model_epoch_000_*.pth"))
        if first.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the first run ended first: {(tmp_path / 'first.log').read_text()[-3000:]}")
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)

    result = pipeline(spec="specs/smoke.yaml", overrides=overrides, n_trials=1, results_dir=str(results),
                      sources=DataSources(train=str(data / "train"), eval=str(data / "eval")), resume=True,
                      tracking_config=Tracking(tracking_uri=uri),
                      stages={"quantize": False, "gen_trt_engine": False, "inference": False})

    spec = load_spec(results / "spec.yaml")
    name = next(p.name for p in (results / "automl").iterdir() if p.is_dir() and p.name.startswith("oneformer-"))
    trials = open_study(spec, name, rdb_storage(spec)).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # one trial counted, not two
    killed, retry = trials
    assert killed.user_attrs["error"].startswith("interrupted")
    assert retry.user_attrs["retry_of"] == 0 and retry.params == killed.params
    assert retry.user_attrs["results_dir"] == killed.user_attrs["results_dir"]  # in the trial's own folder
    assert retry.user_attrs["epochs"] == 4  # ends at the same epoch count
    status = [json.loads(line) for line in (Path(retry.user_attrs["results_dir"]) / "train" / "status.json")
              .read_text().splitlines()]
    started = [s["epoch"] for s in status if s["status"] == "STARTED"]
    assert started[0] == 0 and started[1] >= 1  # the rerun went on after the epochs finished before the kill
    assert [s["epoch"] for s in status if s["message"] == "Train epoch finished"] == [0, 1, 2, 3]  # each once
    assert result["checkpoint"].startswith(killed.user_attrs["results_dir"])
    assert result["registered"]["version"] == "1"
    assert retry.intermediate_values.items() >= killed.intermediate_values.items()  # its curve carried over

    from mlflow.tracking import MlflowClient  # the killed attempt's runs do not stay RUNNING in the MLflow UI

    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("oneformer").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED", "FAILED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert MlflowClient(uri).get_run(killed.user_attrs["mlflow_run_id"]).info.status == "FAILED"
