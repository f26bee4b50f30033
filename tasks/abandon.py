"""Ending a study's trial flow runs when the study flow that launched them is cancelled, crashed or failed, and
failing their Optuna trials: its own module because it needs both the trial runs and the study storage."""

from __future__ import annotations

import logging
import time
from uuid import UUID

import optuna
from optuna.trial import TrialState
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelled, Cancelling

from oneformer.spec import build_spec
from tasks import tracking
from tasks.study_storage import rdb_storage

log = logging.getLogger(__name__)
SETTLE_S = 90.0  # how long the hook waits for cancelled trial runs' workers to kill them


def abandon_trials(flow_run_id: UUID, why: str) -> list[str]:
    """Cancel the trial flow runs a study flow launched that have not ended (their workers kill them) and mark their
    Optuna trials failed: once the study flow is cancelled or crashed, nobody waits for them. Returns their names."""
    ended = []
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        for run in children:
            if {"study", "trial_id", "spec"} - set(run.parameters) or (run.state and run.state.is_final()):
                continue  # not a trial, or over already
            try:  # first: once killed, the trial's own hook would record its SIGTERM as the reason instead
                fail_trial(run.parameters, why)
            except Exception:
                log.exception("could not mark the trial of flow run %s failed", run.name)
            # a run no worker has taken yet is simply cancelled; a running one is killed by its worker
            client.set_flow_run_state(run.id, Cancelling(message=why) if run.start_time else Cancelled(message=why),
                                      force=True)
            ended.append(run.name)
        settle(client, [r.id for r in children if r.name in ended])
    return ended


def settle(client: SyncPrefectClient, flow_run_ids: list[UUID], timeout: float = SETTLE_S) -> None:
    """Wait (up to `timeout` s) for cancelled trial runs to end, so a run its engine reported Crashed on the
    worker's SIGTERM, after any hook had looked, still ends Cancelled."""
    deadline = time.monotonic() + timeout
    waiting = list(flow_run_ids)
    while waiting and time.monotonic() < deadline:
        for run_id in list(waiting):
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                cancelled_not_crashed(client, run)
                waiting.remove(run_id)
        if waiting:
            time.sleep(1)


def cancelled_not_crashed(client: SyncPrefectClient, flow_run: FlowRun) -> bool:
    """A trial flow run whose cancellation was asked for ends Cancelled: its worker stops it with SIGTERM, which the
    run's own engine reports as Crashed first. True when a cancellation was asked for."""
    now = client.read_flow_run(flow_run.id).state
    asked = [s for s in client.read_flow_run_states(flow_run.id) if s.type.value == "CANCELLING"]
    if asked and now is not None and now.is_crashed():
        client.set_flow_run_state(flow_run.id, Cancelled(message=asked[-1].message), force=True)
    return bool(asked)


def fail_trial(parameters: dict, why: str) -> bool:
    """Mark the Optuna trial of a trial flow run's parameters failed with `why`, if it is still running (a trial
    that told the study its result keeps it). True when this call failed it."""
    storage = rdb_storage(build_spec(parameters["spec"], f"spec of trial {parameters.get('number')}"))
    trial_id = int(parameters["trial_id"])
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        return False
    try:
        storage.set_trial_user_attr(trial_id, "error", why[:1000])
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:  # it ended meanwhile (told its result, or its own hook)
        return False


def end_trial_run(parameters: dict, status: str) -> str | None:
    """End a trial flow run's MLflow run (nested under the study's) with `status` if it is still RUNNING, so the
    MLflow UI does not show a killed trial as running for ever; its id when this call ended it."""
    storage = rdb_storage(build_spec(parameters["spec"], f"spec of trial {parameters.get('number')}"))
    run = storage.get_trial(int(parameters["trial_id"])).user_attrs.get("mlflow_run_id")
    if not run:  # killed before its MLflow run opened
        return None
    return str(run) if tracking.end_if_running(tracking.client(parameters["tracking_uri"]), run, status) else None
