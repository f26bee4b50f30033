"""The failure hook as a worker runs it for a flow run whose process is gone (killed, or cancelled): it finds the
run's MLflow run from the flow run's parameters and ends it, so nothing is left RUNNING in the MLflow UI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from prefect.states import Cancelled, Crashed

from flows.common import RUN_RECORD, on_failure
from tasks import tracking


def orphan(results: Path, flow_run_id: str) -> tuple[MlflowClient, str]:
    """What a pipeline's process leaves when it is killed mid-run: its MLflow run RUNNING, its record RUNNING."""
    uri = f"sqlite:///{results}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, "oneformer", results / "mlartifacts")
    run = tracking.start_run(c, exp, "pipeline-night", tags={"prefect.flow_run_id": flow_run_id, "run_key": "k"})
    (results / RUN_RECORD).write_text(json.dumps({"run_key": "k", "flow_run_id": flow_run_id, "mlflow_run": run,
                                                  "state": "RUNNING"}))
    return c, run


@pytest.mark.parametrize(("state", "status"), [(Crashed(message="the process exited with -9"), "FAILED"),
                                               (Cancelled(message="cancelled from the UI"), "KILLED")])
def test_the_hook_of_a_gone_process_ends_its_mlflow_run_and_record(tmp_path: Path, state, status: str) -> None:  # noqa: ANN001
    results = tmp_path / "results"
    results.mkdir()
    flow_run_id = str(uuid.uuid4())
    c, run = orphan(results, flow_run_id)
    other, other_run = orphan(tmp_path, str(uuid.uuid4()))  # another flow run's, in another folder
    flow_run = SimpleNamespace(id=flow_run_id, name="nightly-20261207", parameters={
        "spec": "specs/smoke.yaml", "results_dir": str(results), "overrides": {}, "n_trials": 2})

    on_failure(SimpleNamespace(name="oneformer-pipeline"), flow_run, state)

    assert c.get_run(run).info.status == status
    assert c.get_run(run).data.tags["failure"] == state.message
    record = json.loads((results / RUN_RECORD).read_text())
    assert record["state"] == state.type.value and record["run_key"] == "k"  # resumable, and says how it ended
    assert state.message in (results / "summary.md").read_text()
    assert other.get_run(other_run).info.status == "RUNNING"


def test_a_flow_run_that_never_opened_a_run_is_left_alone(tmp_path: Path) -> None:
    flow_run = SimpleNamespace(id=str(uuid.uuid4()), name="x", parameters={
        "spec": "specs/smoke.yaml", "results_dir": str(tmp_path / "never-written")})
    on_failure(SimpleNamespace(name="oneformer-pipeline"), flow_run, Crashed(message="killed at once"))
    assert not (tmp_path / "never-written").exists()
