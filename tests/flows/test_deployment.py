"""prefect.yaml against a real Prefect server and process worker on 127.0.0.1, as a user deploys and runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from servers import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT twice (a worker ignores SIGTERM while it waits), then kill."""
    for _ in range(2):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def served(tmp_path: Path, small_synth: Path):  # noqa: ANN201 - (env, results folder)
    """A Prefect server and a process worker; the deployments of prefect.yaml deployed to it."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    results = tmp_path / "results"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "ONEFORMER_HOME": str(REPO), "ONEFORMER_SPEC": "specs/smoke.yaml", "ONEFORMER_DATA": str(small_synth.parent),
           "ONEFORMER_RESULTS": str(results), "ONEFORMER_CACHE": str(tmp_path / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_healthy(api, server)
        run = lambda *args: subprocess.run([PREFECT, *args], env=env, cwd=REPO, check=True,  # noqa: E731
                                           capture_output=True, text=True, timeout=180)
        run("work-pool", "create", "oneformer-process", "--type", "process")
        run("--no-prompt", "deploy", "--all")
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "oneformer-process"], env=env, cwd=REPO,
                                  stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT)
        yield env, results, logs, run
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def test_deploy_from_prefect_yaml_and_run_on_a_worker(served, small_synth: Path) -> None:  # noqa: ANN001
    env, results, logs, run = served
    nightly = json.loads(run("deployment", "inspect", "oneformer-pipeline/nightly", "--output", "json").stdout)
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["parameters"]["sources"]["train"] == f"{small_synth.parent}/train"
    assert nightly["work_pool_name"] == "oneformer-process"
    schema = nightly["parameter_openapi_schema"]["properties"]
    assert schema["n_trials"]["anyOf"][0]["maximum"] == 500 and "automl_policy" in schema

    classes = yaml.safe_load(small_synth.read_text())["model"]["sem_seg_head"]["num_classes"]
    overrides = {"model.sem_seg_head.num_classes": classes, "train.num_epochs": 2, "export.input_height": 64,
                 "export.input_width": 64, "quantize.num_calibration_images": 2}
    done = subprocess.run(
        [PREFECT, "deployment", "run", "oneformer-pipeline/on-demand", "--param", "n_trials=1",
         "--param", f"overrides={json.dumps(overrides)}", "--param", "model_name=deployed",
         "--param", 'stages={"inference": false}', "--watch", "--watch-timeout", "600"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=700)
    assert done.returncode == 0, done.stdout + done.stderr + (logs / "worker.log").read_text()[-4000:]
    assert "Completed" in done.stdout

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{results.resolve()}/mlflow.db"
    version = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("deployed", "champion")
    assert str(version.version) == "1" and float(version.tags["mIoU"]) >= 0
    assert (results / "export" / "model.onnx").is_file() and (results / "quantize" / "model.int8.onnx").is_file()
    assert not (results / "inference").exists()  # the stages parameter reached the run


def test_an_action_run_overrides_one_parameter_and_keeps_the_deployments_others(served, small_synth: Path,  # noqa: ANN001
                                                                                 random_checkpoint: Path) -> None:
    env, results, logs, run = served
    export = json.loads(run("deployment", "inspect", "oneformer-export/export", "--output", "json").stdout)
    assert export["parameters"]["spec"] == "specs/smoke.yaml" and export["parameters"]["results_dir"] == str(results)
    assert "inputs" not in export["parameter_openapi_schema"]["properties"]

    classes = yaml.safe_load(small_synth.read_text())["model"]["sem_seg_head"]["num_classes"]
    overrides = {"model.sem_seg_head.num_classes": classes, "export.input_height": 64, "export.input_width": 64}
    done = subprocess.run(
        [PREFECT, "deployment", "run", "oneformer-export/export", "--param", f"parent={random_checkpoint}",
         "--param", f"overrides={json.dumps(overrides)}", "--watch", "--watch-timeout", "300"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr + (logs / "worker.log").read_text()[-4000:]
    assert "Completed" in done.stdout

    written = yaml.safe_load((results / "export.spec.yaml").read_text())  # the deployment's results folder
    assert written["export"]["input_height"] == 64 and written["model"]["sem_seg_head"]["num_classes"] == classes
    assert written["model"]["one_former"]["num_object_queries"] == 12  # the deployment's spec (specs/smoke.yaml)
    assert written["dataset"]["label_map"] == f"{small_synth.parent}/train/label_map.json"  # and its sources
    assert (results / "export" / "model.onnx").is_file()
    name = json.loads(run("flow-run", "ls", "--flow-name", "oneformer-export", "--output", "json").stdout)[0]["name"]
    assert name.startswith("export-random-"), name  # named for its action and parent, in Prefect and in MLflow

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{results.resolve()}/mlflow.db")
    tracked = c.search_runs([c.get_experiment_by_name("oneformer").experiment_id], "tags.action = 'export'")
    assert [r.info.run_name for r in tracked] == [name]
