"""prefect.yaml against a real Prefect server and process worker on 127.0.0.1, as a user deploys and runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from servers import PREFECT, prefect_server, prefect_workers

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


WORKERS = ["w1", "w2", "w3"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, small_synth: Path):  # noqa: ANN201 - (env, results, logs, run)
    """A Prefect server and three process workers on one pool, each taking one flow run at a time; the deployments
    of prefect.yaml deployed to it."""
    root = tmp_path_factory.mktemp("served")
    results = root / "results"
    own = {"ONEFORMER_HOME": str(REPO), "ONEFORMER_SPEC": "specs/smoke.yaml", "ONEFORMER_DATA": str(small_synth.parent),
           "ONEFORMER_RESULTS": str(results), "ONEFORMER_CACHE": str(root / "cache"),
           "PREFECT_WORKER_QUERY_SECONDS": "2"}  # a free worker takes the next trial within 2 s, not 10
    with prefect_server(root, own) as env:
        env.pop("MLFLOW_TRACKING_URI", None)
        run = lambda *args: subprocess.run([PREFECT, *args], env=env, cwd=REPO, check=True,  # noqa: E731
                                           capture_output=True, text=True, timeout=180)
        run("work-pool", "create", "oneformer-process", "--type", "process")
        run("--no-prompt", "deploy", "--all")
        with prefect_workers("oneformer-process", WORKERS, env, REPO, root / "logs", limit=1):
            yield env, results, root / "logs", run


def worker_logs(logs: Path) -> str:
    """The tail of every worker's log, for a failure message."""
    return "\n".join(f"--- {w}\n{(logs / f'{w}.log').read_text()[-3000:]}" for w in WORKERS)


def test_a_deployed_pipeline_spreads_its_trials_over_the_pools_workers(served, small_synth: Path,  # noqa: ANN001
                                                                       postgres_url: str) -> None:
    """`prefect deployment run` of the pipeline with automl.trial_deployment: one worker runs the pipeline, each
    trial is a flow run of the trial deployment taken by whichever of the other two is free, the study lives in
    PostgreSQL, and the pipeline goes on to register the best trial's model."""
    env, results, logs, run = served
    nightly = json.loads(run("deployment", "inspect", "oneformer-pipeline/nightly", "--output", "json").stdout)
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["parameters"]["sources"]["train"] == f"{small_synth.parent}/train"
    assert nightly["work_pool_name"] == "oneformer-process"
    schema = nightly["parameter_openapi_schema"]["properties"]
    assert schema["n_trials"]["anyOf"][0]["maximum"] == 500 and "automl_policy" in schema
    assert schema["arch"]["anyOf"][0]["enum"] == ["oneformer", "mask2former", "segformer"]  # a choice in the form

    classes = yaml.safe_load(small_synth.read_text())["model"]["sem_seg_head"]["num_classes"]
    overrides = {"model.sem_seg_head.num_classes": classes, "train.num_epochs": 1, "export.input_height": 64,
                 "export.input_width": 64, "quantize.num_calibration_images": 2,
                 "automl.trial_deployment": "oneformer-trial/trial", "automl.n_jobs": 2, "automl.storage": postgres_url,
                 "automl.study_name": "spread", "automl.pruner": "none", "automl.sampler": "random"}
    done = subprocess.run(
        [PREFECT, "deployment", "run", "oneformer-pipeline/on-demand", "--param", "n_trials=6",
         "--param", f"overrides={json.dumps(overrides)}", "--param", "model_name=deployed",
         "--param", 'stages={"inference": false}', "--watch", "--watch-timeout", "600"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=700)
    assert done.returncode == 0, done.stdout + done.stderr + worker_logs(logs)
    assert "Completed" in done.stdout

    import optuna

    from tasks.automl import with_driver

    storage = with_driver(postgres_url)
    [summary] = [s for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith("spread-")]
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(6)], trials
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6  # six different trials
    ran_on = [t.user_attrs["worker"] for t in trials]
    assert len(set(ran_on)) == 2 and set(ran_on) < set(WORKERS), ran_on  # both free workers; the third ran the pipeline
    for t in trials:
        assert Path(t.user_attrs["checkpoint"]).is_file() and t.user_attrs["epochs"] == 1

    flow_runs = json.loads(run("flow-run", "ls", "--flow-name", "oneformer-trial", "--limit", "50", "--output",
                               "json").stdout)
    assert len(flow_runs) == 6 and {r["state_type"] for r in flow_runs} == {"COMPLETED"}  # each trial ran once
    assert {r["id"] for r in flow_runs} == {t.user_attrs["prefect_flow_run"] for t in trials}
    assert sorted(r["parameters"]["trial_id"] for r in flow_runs) == sorted(t._trial_id for t in trials)

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{results.resolve()}/mlflow.db"
    c = MlflowClient(uri, registry_uri=uri)
    version = c.get_model_version_by_alias("deployed", "champion")
    assert str(version.version) == "1" and float(version.tags["mIoU"]) >= 0
    parent = c.get_run(version.run_id).info.run_id
    nested = c.search_runs([c.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags.get("optuna.trial") for r in nested if "optuna.trial" in r.data.tags) == \
        [str(n) for n in range(6)]  # every trial's MLflow run, nested under the pipeline's
    assert (results / "export" / "model.onnx").is_file() and (results / "quantize" / "model.int8.onnx").is_file()
    assert not (results / "inference").exists()  # the stages parameter reached the run


def test_an_action_run_overrides_one_parameter_and_keeps_the_deployments_others(served, small_synth: Path,  # noqa: ANN001
                                                                                 random_checkpoint: Path) -> None:
    env, results, logs, run = served
    shutil.rmtree(results / "export", ignore_errors=True)  # the pipeline test's export, if it ran first
    export = json.loads(run("deployment", "inspect", "oneformer-export/export", "--output", "json").stdout)
    assert export["parameters"]["spec"] == "specs/smoke.yaml" and export["parameters"]["results_dir"] == str(results)
    assert "inputs" not in export["parameter_openapi_schema"]["properties"]

    classes = yaml.safe_load(small_synth.read_text())["model"]["sem_seg_head"]["num_classes"]
    overrides = {"model.sem_seg_head.num_classes": classes, "export.input_height": 64, "export.input_width": 64}
    done = subprocess.run(
        [PREFECT, "deployment", "run", "oneformer-export/export", "--param", f"parent={random_checkpoint}",
         "--param", f"overrides={json.dumps(overrides)}", "--watch", "--watch-timeout", "300"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr + worker_logs(logs)
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
