"""oneformer-trial: one AutoML trial of a study flow, as its own flow run, so a study's trials spread over every
worker of the trial deployment's pool (automl.trial_deployment); the study flow launches and watches them."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, runtime
from pydantic import Field

from oneformer.actions import TABLE
from oneformer.errors import SpecError
from oneformer.spec import build_spec, flatten


def worker_name() -> str:
    """The Prefect worker that runs this flow run (the worker sets it in the run's environment), else the host."""
    return os.environ.get("PREFECT__WORKER_NAME") or socket.gethostname()


def trial_ended(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancellation/crash hook (run by the worker that killed the process): the trial is marked failed in its study
    instead of staying RUNNING for a study flow that no longer waits."""
    from prefect.client.orchestration import get_client

    from tasks.abandon import cancelled_not_crashed, end_trial_run, fail_trial

    try:
        with get_client(sync_client=True) as client:
            cancelled = cancelled_not_crashed(client, flow_run)
        fail_trial(flow_run.parameters, f"flow run {flow_run.name} was {state.name.lower()}: {state.message or ''}")
        end_trial_run(flow_run.parameters, "KILLED" if cancelled or state.is_cancelled() else "FAILED")
    except Exception:
        logging.getLogger(__name__).exception("could not mark the trial of flow run %s failed", flow_run.id)


@flow(name="oneformer-trial", log_prints=True, on_cancellation=[trial_ended], on_crashed=[trial_ended])
def trial(
    spec: Annotated[dict[str, Any], Field(description="The study flow's resolved spec (data staged, secrets out)")],
    study: Annotated[str, Field(description="Optuna study name, in the spec's automl.storage")],
    trial_id: Annotated[int, Field(description="The trial the study flow asked for (Optuna's trial id)")],
    number: Annotated[int, Field(description="The trial's number in its study")],
    label: Annotated[str, Field(description="The trial's values, for names")],
    tracking_uri: Annotated[str, Field(description="MLflow tracking URI of the study flow")],
    experiment: Annotated[str, Field(description="MLflow experiment id")],
    parent_run: Annotated[str, Field(description="The study flow's MLflow run; the trial's run nests under it")],
) -> dict:
    """Train the trial on this worker and tell the study; a failed trial is recorded in the study, not raised."""
    s = build_spec(spec, f"spec of trial {number}")
    where = f"worker {worker_name()!r} on host {socket.gethostname()!r}"
    if not Path(s.results_dir).is_dir():
        raise SpecError([f"results_dir {s.results_dir} does not exist on {where}: a trial run by a deployment writes "
                        f"its checkpoints there and the study flow reads them back, so every worker of the pool must "
                        f"mount the study flow's results folder at the same path (NFS, a Kubernetes "
                        f"PersistentVolume)"])
    values = flatten(s.model_dump(mode="json"))
    if missing := [f"{i.key}: {values[i.key]}" for i in TABLE["train"].inputs
                   if values.get(i.key) and not Path(values[i.key]).exists()]:  # the study flow checked the rest
        raise SpecError([*missing, f"not found on {where}: a trial reads the data where the study flow staged it, "
                                   f"so ONEFORMER_CACHE, or the data itself, must be on storage every worker mounts"])
    from tasks.automl import attach, trial_task  # here, not at import: the worker's hooks import this module

    opened, storage, t = attach(s, study, trial_id)
    t.set_user_attr("worker", worker_name())
    t.set_user_attr("prefect_flow_run", str(runtime.flow_run.id or ""))
    return trial_task(s)(
        opened, storage, t, number, label, s, tracking_uri, experiment, parent_run)
