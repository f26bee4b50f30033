"""Where a study's trials run: as task runs in the study flow's own process, or as flow runs of a trial deployment
that any worker of its pool picks up. Both keep a rolling pool: a new trial starts as soon as one ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

import optuna
from optuna.trial import TrialState
from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture, as_completed
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from oneformer.errors import SpecError
from oneformer.secrets import secrets_in
from oneformer.spec import ExperimentSpec
from tasks.heartbeats import heartbeat_warnings_off

POLL_S = 2.0  # how often the study flow looks at its trials' flow runs
WAIT_WARN_S = 60.0  # a trial still waiting for a worker after this long is worth a log line
GRACE_S = 120.0  # a trial flow run outliving its trial_timeout by this much is cancelled by the study flow


class LocalTrials:
    """Trials as task runs of the study flow (threads of its process, so one machine)."""

    def __init__(self, submit: Callable[[optuna.Trial], PrefectFuture]) -> None:
        self.submit, self.running = submit, {}

    def start(self, trial: optuna.Trial) -> None:
        """Submit the trial's task run."""
        self.running[self.submit(trial)] = trial

    def wait(self) -> tuple[optuna.Trial, str | None]:
        """The next trial to end and, when it ended without telling the study (timed out, crashed), why."""
        finished = next(as_completed(list(self.running)))
        finished.wait()  # the final state, kept by the future; `.state` before it reads the API, which may lag
        trial, state = self.running.pop(finished), finished.state
        return trial, None if state.is_completed() else f"{state.name}: {state.message}"


@dataclass
class Launched:
    """One trial's flow run, and when the study flow last saw it change."""

    trial: optuna.Trial
    flow_run: UUID
    since: float = field(default_factory=time.monotonic)
    warned: bool = False


class DeployedTrials:
    """Trials as flow runs of `automl.trial_deployment`, linked under the study's flow run; whichever worker of the
    deployment's pool is free takes the next one. The study flow only launches and watches them."""

    def __init__(self, spec: ExperimentSpec, study: optuna.Study, storage: optuna.storages.RDBStorage,
                 parameters: Callable[[optuna.Trial], dict]) -> None:
        refuse_secrets_in(spec)
        self.name, self.timeout = spec.automl.trial_deployment, spec.automl.trial_timeout
        self.study, self.storage, self.parameters = study, storage, parameters
        self.pool = reachable(self.name)
        self.running: dict[UUID, Launched] = {}

    def start(self, trial: optuna.Trial) -> None:
        """A flow run of the trial deployment, idempotent per trial (a retried study flow never launches it twice)."""
        params = self.parameters(trial)
        run = run_deployment(self.name, parameters=params, timeout=0, as_subflow=True,
                             flow_run_name=f"trial {trial.number}: {params['label']}"[:200],
                             idempotency_key=f"{self.study.study_name}-{trial._trial_id}")
        get_run_logger().info("trial %d: flow run %s of deployment %s", trial.number, run.name, self.name)
        self.running[run.id] = Launched(trial, run.id)

    def wait(self) -> tuple[optuna.Trial, str | None]:
        """Poll the trials' flow runs until one ends: the next trial to end and, when it ended without telling the
        study, why. A trial whose heartbeat went stale (its worker's machine is gone) or that outlives its timeout
        is ended here and its flow run cancelled."""
        while True:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(self.running))))
                with heartbeat_warnings_off():  # a dead machine's trial has a stale heartbeat
                    optuna.storages.fail_stale_trials(self.study)
                for run in runs:
                    if ended := self._ended(client, run):
                        return ended
            time.sleep(POLL_S)

    def _ended(self, client: SyncPrefectClient, run: FlowRun) -> tuple[optuna.Trial, str | None] | None:
        """The trial of `run` when it has ended (and why, when it did not tell the study), else None."""
        launched = self.running[run.id]
        if run.state is not None and run.state.is_final():
            del self.running[run.id]
            why = None if run.state.is_completed() else f"flow run {run.name} {run.state.name}: {run.state.message}"
            return launched.trial, why
        if run.start_time is None:  # no worker has taken it yet
            if not launched.warned and time.monotonic() - launched.since > WAIT_WARN_S:
                get_run_logger().warning("trial %d has waited %.0f s for a worker of pool %r: start one with "
                                         "`prefect worker start --pool %s`", launched.trial.number, WAIT_WARN_S,
                                         self.pool, self.pool)
                launched.warned = True
            return None
        told = self.storage.get_trial(launched.trial._trial_id)
        if told.state == TrialState.FAIL and "error" not in told.user_attrs:  # failed by the stale-heartbeat check
            why = f"flow run {run.name} lost its heartbeat (its worker's machine stopped?)"
        elif self.timeout and time.time() - run.start_time.timestamp() > self.timeout + GRACE_S:
            why = f"flow run {run.name} outlived automl.trial_timeout ({self.timeout} s)"
        else:
            return None
        client.set_flow_run_state(run.id, Cancelling(message=why), force=True)
        del self.running[run.id]
        return launched.trial, why


def still_running(flow_run_id: str) -> bool:
    """Whether a trial's flow run (on a worker, outliving the study flow that launched it) has not ended yet."""
    if not flow_run_id or not PREFECT_API_URL.value():
        return False
    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(UUID(flow_run_id)).state
        except (ObjectNotFound, ValueError):
            return False
    return state is not None and not state.is_final()


def reachable(name: str) -> str:
    """The work pool of deployment `name` on the Prefect API; a clear error when there is no API or no such
    deployment."""
    where = PREFECT_API_URL.value()
    if not where:
        raise SpecError([f"automl.trial_deployment={name!r}: trials run by a deployment need a Prefect server "
                        f"(PREFECT_API_URL is not set, so this run uses a temporary local API with no deployments). "
                        f"Run against the server the deployment lives on, or leave automl.trial_deployment empty to "
                        f"run the trials in this flow run's process"])
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise SpecError([f"automl.trial_deployment={name!r}: no such deployment on the Prefect API at {where}. "
                            f"Deploy it (`prefect --no-prompt deploy --name {name.split('/', 1)[1]}` with "
                            f"prefect.yaml's trial deployment) or leave the key empty"]) from None
    if not deployment.work_pool_name:
        raise SpecError([f"automl.trial_deployment={name!r} has no work pool: no worker would ever run a trial"])
    return deployment.work_pool_name


def refuse_secrets_in(spec: ExperimentSpec) -> None:
    """A trial's flow run gets the spec as parameters, which Prefect stores: a spec holding a secret is refused."""
    if found := secrets_in(spec.model_dump(mode="json")):
        raise SpecError([f"{', '.join(found)} hold a secret, and automl.trial_deployment hands the spec to each trial "
                        f"as flow-run parameters (stored in Prefect's database): remove it from the spec and give it "
                        f"to the workers instead (PGPASSWORD or ~/.pgpass for a PostgreSQL study, the work pool's "
                        f"environment for the rest)"])
