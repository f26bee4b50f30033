"""prefect.yaml against a real Prefect server and process worker on 127.0.0.1, as a user deploys and runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from servers import PREFECT, new_database, prefect_server, prefect_workers

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


WORKERS = ["w1", "w2", "w3"]
# one per free worker: that a worker takes the next trial as soon as its first ends is the study's own scheduling,
# tested in-process (tests/tasks/test_automl.py::test_a_new_trial_starts_as_soon_as_one_ends); a third trial here
# would be a third flow-run process (imports and all) for no behaviour of the deployment
TRIALS = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, small_synth: Path,  # noqa: ANN201 - (env, results, logs, run)
           postgres_url: str):
    """A Prefect server on PostgreSQL (on SQLite, three workers' heartbeats and submissions lock its database for
    a minute at a time) and three process workers on one pool, each taking one flow run at a time; the deployments
    of prefect.yaml deployed to it."""
    root = tmp_path_factory.mktemp("served")
    results = root / "results"
    own = {"ONEFORMER_HOME": str(REPO), "ONEFORMER_SPEC": "specs/smoke.yaml", "ONEFORMER_DATA": str(small_synth.parent),
           "ONEFORMER_RESULTS": str(results), "ONEFORMER_CACHE": str(root / "cache"),
           "PREFECT_WORKER_QUERY_SECONDS": "2"}  # a free worker takes the next trial within 2 s, not 10
    with prefect_server(root, own, new_database(postgres_url, "prefect_served", "asyncpg")) as env:
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
    nightly = deployment_of(env["PREFECT_API_URL"], "oneformer-pipeline/nightly")
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
        [PREFECT, "deployment", "run", "oneformer-pipeline/on-demand", "--param", f"n_trials={TRIALS}",
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
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(TRIALS)], trials
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == TRIALS  # all different trials
    ran_on = [t.user_attrs["worker"] for t in trials]
    assert len(set(ran_on)) == 2 and set(ran_on) < set(WORKERS), ran_on  # both free workers; the third ran the pipeline
    for t in trials:
        assert Path(t.user_attrs["checkpoint"]).is_file() and t.user_attrs["epochs"] == 1

    flow_runs = flow_runs_of(env["PREFECT_API_URL"], flow="oneformer-trial")
    assert len(flow_runs) == TRIALS and {r.state_type.value for r in flow_runs} == {"COMPLETED"}  # each ran once
    assert {str(r.id) for r in flow_runs} == {t.user_attrs["prefect_flow_run"] for t in trials}
    assert sorted(r.parameters["trial_id"] for r in flow_runs) == sorted(t._trial_id for t in trials)

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{results.resolve()}/mlflow.db"
    c = MlflowClient(uri, registry_uri=uri)
    version = c.get_model_version_by_alias("deployed", "champion")
    assert str(version.version) == "1" and float(version.tags["mIoU"]) >= 0
    parent = c.get_run(version.run_id).info.run_id
    nested = c.search_runs([c.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags.get("optuna.trial") for r in nested if "optuna.trial" in r.data.tags) == \
        [str(n) for n in range(TRIALS)]  # every trial's MLflow run, nested under the pipeline's
    assert (results / "export" / "model.onnx").is_file() and (results / "quantize" / "model.int8.onnx").is_file()
    assert not (results / "inference").exists()  # the stages parameter reached the run


def test_an_action_run_overrides_one_parameter_and_keeps_the_deployments_others(served, small_synth: Path,  # noqa: ANN001
                                                                                 random_checkpoint: Path) -> None:
    env, results, logs, run = served
    shutil.rmtree(results / "export", ignore_errors=True)  # the pipeline test's export, if it ran first
    export = deployment_of(env["PREFECT_API_URL"], "oneformer-export/export")
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
    [name] = [r.name for r in flow_runs_of(env["PREFECT_API_URL"], flow="oneformer-export")]
    assert name.startswith("export-random-"), name  # named for its action and parent, in Prefect and in MLflow

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{results.resolve()}/mlflow.db")
    tracked = c.search_runs([c.get_experiment_by_name("oneformer").experiment_id], "tags.action = 'export'")
    assert [r.info.run_name for r in tracked] == [name]


@contextmanager
def api_client(api: str) -> Iterator[SyncPrefectClient]:
    """A client of the served API, for the checks around what a user runs (each `prefect` CLI call would be a
    process importing Prefect: 1.6 s of CPU on 2 cores)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def flow_runs_of(api: str, parent: str | None = None, ids: list[str] | None = None,
                 flow: str | None = None) -> list:
    """Flow runs on the served API: by id, the subflow runs (trials) of a parent, or every run of a flow."""
    from uuid import UUID

    from prefect.client.schemas import filters as f

    with api_client(api) as client:
        if flow:
            return client.read_flow_runs(flow_filter=f.FlowFilter(name=f.FlowFilterName(any_=[flow])))
        which = f.FlowRunFilter(parent_flow_run_id=f.FlowRunFilterParentFlowRunId(any_=[UUID(parent)])) if parent \
            else f.FlowRunFilter(id=f.FlowRunFilterId(any_=[UUID(i) for i in ids or []]))
        return client.read_flow_runs(flow_run_filter=which)


def deployment_of(api: str, name: str) -> dict:
    """A deployment on the served API, as `prefect deployment inspect --output json` shows it."""
    with api_client(api) as client:
        return client.read_deployment_by_name(name).model_dump(mode="json")


def set_pool(api: str, pool: str, **changes: object) -> None:
    """Change the work pool (concurrency limit, paused), as `prefect work-pool set-concurrency-limit`, `pause`,
    `clear-concurrency-limit` and `resume` do."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    with api_client(api) as client:
        client.update_work_pool(pool, WorkPoolUpdate(**changes))


def states_of(api: str, flow_run: str) -> list[str]:
    """The state types a flow run on the served API went through, oldest first."""
    from uuid import UUID

    with api_client(api) as client:
        return [s.type.value for s in client.read_flow_run_states(UUID(flow_run))]


def processes_of(flow_run_ids: set[str]) -> list[int]:
    """Pids of the processes running any of these flow runs (a worker sets PREFECT__FLOW_RUN_ID in their env)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            text = environ.read_bytes().decode(errors="replace")
            values = dict(v.split("=", 1) for v in text.split("\0") if "=" in v)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if values.get("PREFECT__FLOW_RUN_ID") in flow_run_ids:
            pids.append(int(environ.parent.name))
    return pids


def until(what: str, check, timeout: float, logs: Path):  # noqa: ANN001, ANN201 - a polled condition
    """Poll `check` every second until it returns something truthy; fail after `timeout` s naming `what`."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(1)
    pytest.fail(f"not within {timeout:.0f} s: {what}\n{worker_logs(logs)}")


@pytest.mark.parametrize("how", ["cancelled", "killed"])
def test_a_cancelled_or_crashed_pipeline_ends_the_trials_it_launched(served, small_synth: Path, postgres_url: str,  # noqa: ANN001
                                                                     how: str) -> None:
    """`prefect flow-run cancel` of a pipeline while two trials train on other workers: the trials' flow runs are
    cancelled, their processes gone, their Optuna trials failed. Its process killed while its two trials wait in
    the queue (the pool at its concurrency limit): they are cancelled before any worker takes them."""
    import os
    import re
    import signal

    import optuna

    from tasks.automl import with_driver

    env, results, logs, run = served
    classes = yaml.safe_load(small_synth.read_text())["model"]["sem_seg_head"]["num_classes"]
    overrides = {"model.sem_seg_head.num_classes": classes, "train.num_epochs": 500,  # far longer than the test
                 "automl.trial_deployment": "oneformer-trial/trial", "automl.n_jobs": 2, "automl.storage": postgres_url,
                 "automl.study_name": f"abandoned-{how}", "automl.pruner": "none", "automl.sampler": "random"}
    api = env["PREFECT_API_URL"]
    if how == "killed":  # the pipeline takes the pool's one slot; the trials it launches wait for another
        set_pool(api, "oneformer-process", concurrency_limit=1)
    try:
        started = run("deployment", "run", "oneformer-pipeline/on-demand", "--param", "n_trials=4",
                      "--param", f"overrides={json.dumps(overrides)}", "--param", f"results_dir={results}-{how}")
        pipeline = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)

        def launched(state: str) -> list | None:
            runs = [r for r in flow_runs_of(api, pipeline) if r.state and r.state.type.value == state]
            return runs if len(runs) >= 2 else None

        if how == "cancelled":
            trials = until("two trial flow runs running", lambda: launched("RUNNING"), 420, logs)
            until("the trials' processes", lambda: len(processes_of({str(r.id) for r in trials})) >= 2, 60, logs)
            run("flow-run", "cancel", pipeline)
        else:  # the pipeline's process dies (OOM killer, a kill -9): its worker reports it crashed
            until("two trial flow runs queued", lambda: launched("SCHEDULED"), 420, logs)
            set_pool(api, "oneformer-process", is_paused=True)  # the freed slot must not start one before the hook ran
            for pid in until("the pipeline's process", lambda: processes_of({pipeline}), 30, logs):
                os.kill(pid, signal.SIGKILL)

        expected = "CANCELLED" if how == "cancelled" else "CRASHED"
        until(f"the pipeline {expected}", lambda: flow_runs_of(api, ids=[pipeline])[0].state.type.value == expected,
              120, logs)
        ended = until("every trial flow run cancelled", lambda: (runs := flow_runs_of(api, pipeline)) and all(
            r.state.is_final() for r in runs) and runs, 180, logs)
    finally:
        if how == "killed":
            set_pool(api, "oneformer-process", concurrency_limit=None, is_paused=False)
    assert {r.state.type.value for r in ended} == {"CANCELLED"}, [(r.name, r.state) for r in ended]
    assert until("no trial process left", lambda: not processes_of({str(r.id) for r in ended}), 60, logs)
    if how == "killed":  # none ever ran: scheduled, then cancelled
        ran = {r.name: states_of(api, str(r.id)) for r in ended}
        assert all(set(s) == {"SCHEDULED", "CANCELLED"} for s in ran.values()), ran

    storage = with_driver(postgres_url)
    [summary] = [s for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(f"abandoned-{how}-")]
    told = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert told and all(t.state.name == "FAIL" for t in told), [(t.number, t.state) for t in told]
    assert all("nobody waits" in t.user_attrs["error"] or how in t.user_attrs["error"] for t in told), \
        [t.user_attrs.get("error") for t in told]
    assert len(told) == len(ended)  # no trial launched after the pipeline ended

    from mlflow.tracking import MlflowClient  # the MLflow UI shows nothing of this run as running any more

    c = MlflowClient(f"sqlite:///{Path(f'{results}-{how}').resolve()}/mlflow.db")
    exp = c.get_experiment_by_name("oneformer").experiment_id
    until("no MLflow run left RUNNING (the workers' hooks end them)",  # they run after the processes are gone
          lambda: not c.search_runs([exp], "attributes.status = 'RUNNING'"), 60, logs)
    runs = c.search_runs([exp])
    [parent] = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == pipeline]
    trial_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert bool(trial_runs) == (how == "cancelled")  # a queued trial never started its MLflow run
    assert {r.info.status for r in runs} <= {"FAILED", "KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    record = json.loads(Path(f"{results}-{how}/pipeline_run.json").read_text())
    assert record["state"] != "RUNNING" and record["mlflow_run"] == parent.info.run_id  # `resume` continues it
