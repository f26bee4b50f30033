"""AutoML with Optuna: a resumable study in RDB storage, one Prefect task and one nested MLflow run per trial."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from oneformer.model.checkpoint import keep_best_and_latest
from oneformer.spec import ExperimentSpec, public_dict, with_values
from tasks import tracking
from tasks.heartbeats import Heartbeat, heartbeat_warnings_off
from tasks.results import Selection, Trial, trial_label
from tasks.search_space import search_space
from tasks.study_storage import rdb_storage, shown, storage_url, with_driver  # noqa: F401 - re-exported
from tasks.training import PruneOnPlateau, TrialDeadline, run_training
from tasks.trial_runs import GRACE_S, DeployedTrials, LocalTrials, still_running

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
INTERRUPTED = "interrupted"  # a trial's error when its process died: retried, never counted


def sampler(spec: ExperimentSpec, offset: int = 0) -> optuna.samplers.BaseSampler:
    """automl.sampler, seeded from train.seed plus the trials the study holds: repeatable, yet a resumed study does
    not replay its proposals, nor a warm-started study its first trial (see run_study)."""
    seed = spec.train.seed + offset
    return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "gp": lambda: optuna.samplers.GPSampler(seed=seed),
            "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed)}[spec.automl.sampler]()


def pruner(spec: ExperimentSpec) -> optuna.pruners.BasePruner:
    """automl.pruner over per-epoch validation mIoU.

    successive_halving: rungs at 1/12, 1/4 and 3/4 of the epochs, each keeping the top third of the trials that
    reached it. median: after the first eighth of the epochs, stop a trial below the median of the completed
    ones (from the third trial on: a median of one trial prunes on noise). hyperband: successive halving in
    brackets of different first rungs, for studies of many trials."""
    epochs = spec.train.num_epochs
    if spec.automl.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 12), reduction_factor=3)
    if spec.automl.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 12), max_resource=epochs,
                                              reduction_factor=3)
    if spec.automl.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, epochs // 8))
    return optuna.pruners.NopPruner()


def open_study(spec: ExperimentSpec, name: str, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Create or continue the study `name`; trials a killed process left RUNNING are marked failed."""
    with heartbeat_warnings_off():
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler(spec),
                                    pruner=pruner(spec), load_if_exists=True)
        optuna.storages.fail_stale_trials(study)
    study.sampler = sampler(spec, len(study.trials))  # moved on by the trials it holds: a resume does not replay
    return study


def warm_start(study: optuna.Study, space: dict[str, optuna.distributions.BaseDistribution],
               params: dict[str, Any], source: str) -> dict[str, Any]:
    """Enqueue `params` (the champion's) as a new study's first trial, keeping the values this space can hold."""
    fitting = {}
    for key, value in params.items():
        dist = space.get(key)
        try:
            if dist is not None and dist._contains(dist.to_internal_repr(value)):
                fitting[key] = value
        except (ValueError, TypeError):
            continue
    if fitting and not study.trials:
        study.enqueue_trial(fitting, user_attrs={"warm_start": source})
    return fitting


def was_interrupted(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial's process died under it: marked so by retry_interrupted, or failed by Optuna's stale-heartbeat
    check (a finished trial's attributes cannot be written, so that one carries no mark; every failure of ours has
    an error attribute)."""
    return str(t.user_attrs.get("error", "")).startswith(INTERRUPTED) or (
        t.state == TrialState.FAIL and "error" not in t.user_attrs)


def retry_interrupted(study: optuna.Study, storage: optuna.storages.RDBStorage, run_key: str) -> list[int]:
    """Trials a killed process left behind (still RUNNING, or failed by Optuna's stale-heartbeat check) are marked
    interrupted; those of this run are enqueued again with their parameters, to resume from their own folder's
    latest checkpoint. Called before this run starts a trial, under the study's lock: no live trial is touched (a
    deployed trial whose flow run still runs on its worker is left to finish and tell the study)."""
    retried_before = {t.user_attrs.get("retry_of") for t in study.trials}
    out = []
    for t in study.get_trials(deepcopy=False):
        left = t.state == TrialState.RUNNING or was_interrupted(t)
        if not left or t.number in retried_before:
            continue
        if t.state == TrialState.RUNNING and still_running(t.user_attrs.get("prefect_flow_run", "")):
            continue  # a trial deployment's flow run outlived a killed study flow: it will tell the study itself
        if t.state == TrialState.RUNNING:  # marked, then failed: Optuna refuses to write a finished trial
            storage.set_trial_user_attr(t._trial_id, "error", f"{INTERRUPTED}: its process died before it finished")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.user_attrs.get("run_key") == run_key and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "run_key": run_key,
                                                      "resume_from": t.user_attrs.get("results_dir", "")})
            out.append(t.number)
    return out


def carry_history(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial,
                  c: MlflowClient | None = None) -> None:
    """The retry of an interrupted trial takes over its learning curve and the pruner's rungs it reached: without
    them the pruner judged the retry's first epoch after the checkpoint as if it were a new trial's first rung, and
    pruned the night's only trial (the run then failed with no completed trial). The killed trial's MLflow run,
    left RUNNING by its dead process, is ended FAILED."""
    number = int(trial.user_attrs["retry_of"])
    original = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if c is not None and (dead := original.user_attrs.get("mlflow_run_id")):
        tracking.end_if_running(c, dead, "FAILED")
    for step, value in sorted(original.intermediate_values.items()):
        trial.report(value, step)
    for key, value in original.system_attrs.items():
        if key.startswith("completed_rung_"):  # successive halving's (and Hyperband's) record of a trial's rungs
            storage.set_trial_system_attr(trial._trial_id, key, value)


def study_key(data_digest: str, spec_digest: str) -> str:
    """The part of a study's name that ties it to one dataset and one training spec."""
    return f"d{data_digest[:8]}-s{spec_digest[:8]}"


def ask_new(study: optuna.Study, space: dict[str, optuna.distributions.BaseDistribution], run_key: str,
            attempts: int = 8) -> optuna.Trial:
    """A trial whose parameters no finished trial of the study holds (a repeat is told FAIL and asked again)."""
    seen = {json.dumps(t.params, sort_keys=True): t.number for t in study.trials if t.state in FINISHED and t.params
            and not was_interrupted(t)}  # a retry repeats its trial
    for _ in range(attempts):
        try:
            with heartbeat_warnings_off():
                trial = study.ask(space)
        except (ImportError, ValueError, RuntimeError) as exc:  # a sampler's missing package or bad state
            raise RuntimeError(f"automl.sampler ({type(study.sampler).__name__}) could not propose a trial: "
                               f"{type(exc).__name__}: {exc}") from exc
        trial.set_user_attr("run_key", run_key)
        repeat = seen.get(json.dumps(trial.params, sort_keys=True))
        if repeat is None:
            return trial
        trial.set_user_attr("error", f"repeats trial {repeat}'s parameters; not trained")
        study.tell(trial, state=TrialState.FAIL)
    return trial  # a space too small to avoid repeats: train it rather than loop


@task(name="automl-trial", task_run_name="trial {number}: {label}", cache_policy=NO_CACHE)
def run_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial, number: int,
              label: str, spec: ExperimentSpec, tracking_uri: str, experiment: str, parent_run: str) -> dict:
    """Train one trial to its budget (or until pruned) and tell the study; a failure is recorded, not raised."""
    logger = get_run_logger()
    # one folder per study: trial numbers restart in every study, and a trial resumes from its folder's last.ckpt
    folder = Path(spec.results_dir).resolve() / "automl" / study.study_name / f"trial_{number:03d}"
    if resume_from := trial.user_attrs.get("resume_from"):  # the retry of an interrupted trial goes on in its folder
        folder = Path(resume_from)
        carry_history(study, storage, trial, tracking.client(tracking_uri))
        logger.info("trial %d retries trial %s from its latest checkpoint in %s", number,
                    trial.user_attrs.get("retry_of"), folder)
    c = tracking.client(tracking_uri)
    run = tracking.start_run(c, experiment, f"trial-{number}", parent_run, {"optuna.trial": str(number)})
    c.log_batch(run, params=[optuna_param(k, v) for k, v in trial.params.items()])
    trial.set_user_attr("results_dir", str(folder))
    trial.set_user_attr("mlflow_run_id", run)
    prune = PruneOnPlateau(trial)
    t0 = time.monotonic()
    callbacks = [prune] if spec.automl.trial_timeout is None else [prune, TrialDeadline(spec.automl.trial_timeout)]
    try:
        with Heartbeat(storage, trial):
            trial_spec = with_values(spec, {**trial.params, "results_dir": str(folder), "train.results_dir": None},
                                     f"trial spec in {folder}")
            result = run_training(trial_spec, tracking_uri, run, callbacks)
    except Exception as exc:
        logger.exception("trial %d failed", number)
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
        study.tell(trial, state=TrialState.FAIL)
        c.set_terminated(run, "FAILED")
        return {"number": number, "state": "FAIL", "error": f"{type(exc).__name__}: {exc}"}
    freed = keep_best_and_latest(Path(result["train_dir"]))
    logger.info("trial %d: kept the best and the last checkpoint, freed %.0f MB", number, freed / 2**20)
    trial.set_user_attr("epochs", result["epochs"])
    trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
    if result["best"]:
        trial.set_user_attr("checkpoint", result["best"]["path"])
    tracking.set_tags(c, run, {"optuna.state": "PRUNED" if prune.pruned_at is not None else "COMPLETE",
                               "epochs": result["epochs"]})
    c.set_terminated(run, "FINISHED")
    if prune.pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
        state = "PRUNED"
    elif result["mIoU"] is None:
        trial.set_user_attr("error", "no checkpoint with a validation mIoU")
        study.tell(trial, state=TrialState.FAIL)
        state = "FAIL"
    else:
        study.tell(trial, result["mIoU"])
        state = "COMPLETE"
    logger.info("trial %d %s after %d epochs: best mIoU %s", number, state, result["epochs"], result["mIoU"])
    return {"number": number, "state": state, "mIoU": result["mIoU"], "epochs": result["epochs"],
            "checkpoint": result["best"]["path"] if result["best"] else None, "run_id": run}


def optuna_param(key: str, value: Any):  # noqa: ANN201 - an mlflow Param
    """A trial value as an MLflow param."""
    from mlflow.entities import Param

    return Param(key, f"{value:.6g}" if isinstance(value, float) else str(value))


def study_name(spec: ExperimentSpec, key: str) -> str:
    """<automl.study_name, else the registered model name>-<data and spec digests>: one study per dataset and spec."""
    return f"{spec.automl.study_name or spec.model_name}-{key}"


def run_study(spec: ExperimentSpec, tracking_uri: str, experiment: str, parent_run: str, key: str, run_key: str,
              champion: tuple[str, dict[str, Any]] | None = None,
              progress: Callable[[int, int, list[dict]], None] | None = None) -> optuna.Study:
    """Train automl.n_trials new trials for the run `run_key` (trials it already finished count: a resumed run goes
    on where it stopped). A new study starts from `champion`'s parameters (its version, its params)."""
    logger = get_run_logger()
    space = search_space(spec)
    storage = rdb_storage(spec)
    study = open_study(spec, study_name(spec, key), storage)
    if champion and not study.trials and (kept := warm_start(study, space, champion[1], champion[0])):
        logger.info("new study %r: first trial warm-starts from %s (%s)", study.study_name, champion[0],
                    trial_label(kept))
        # seeded past the enqueued trial: the stream a new study starts with is the one that proposed the
        # champion's parameters in its own study, so its first draw would repeat the warm start
        study.sampler = sampler(spec, len(study.trials))
    if retried := retry_interrupted(study, storage, run_key):
        logger.info("trials %s were interrupted (their process died): retrying them from their own latest "
                    "checkpoints", ", ".join(map(str, retried)))
    mine = [t for t in study.trials if t.state in FINISHED and t.user_attrs.get("run_key") == run_key
            and not was_interrupted(t) and not str(t.user_attrs.get("error", "")).startswith("repeats")]
    remaining = spec.automl.n_trials - len(mine)
    logger.info("study %r in %s: %d trials in all, %d finished by this run, %d to run; searching %s",
                study.study_name, shown(storage_url(spec)), len(study.trials), len(mine), max(remaining, 0),
                ", ".join(space))
    pool = trial_pool(spec, study, storage, tracking_uri, experiment, parent_run)
    t0 = time.monotonic()
    done = 0
    # a rolling pool: a new trial starts as soon as one ends (no batch waits for its slowest trial)
    while remaining > 0 or pool.running:
        while remaining > 0 and len(pool.running) < spec.automl.n_jobs:
            if spec.automl.timeout and time.monotonic() - t0 > spec.automl.timeout:
                logger.info("automl.timeout (%ss) reached with %d trials left", spec.automl.timeout, remaining)
                remaining = 0
                break
            pool.start(ask_new(study, space, run_key))
            remaining -= 1
        if not pool.running:
            break
        t, why = pool.wait()
        if why:  # timed out, crashed or cancelled: the trial may never have told the study
            logger.warning("trial %d ended without a result: %s", t.number, why)
            if storage.get_trial(t._trial_id).state == TrialState.RUNNING:
                t.set_user_attr("error", why[:1000])
                study.tell(t, state=TrialState.FAIL)
        done += 1
        if progress:
            progress(len(mine) + done, spec.automl.n_trials, study_rows(study))
    return study


def trial_task(spec: ExperimentSpec):  # noqa: ANN201 - a prefect Task
    """run_trial as a task: the trial stops itself at automl.trial_timeout (TrialDeadline); Prefect's own timeout,
    which raises into the thread asynchronously, is only a backstop for a trial stuck outside its training loop."""
    limit = spec.automl.trial_timeout
    return run_trial.with_options(timeout_seconds=None if limit is None else limit + GRACE_S)


def trial_pool(spec: ExperimentSpec, study: optuna.Study, storage: optuna.storages.RDBStorage, tracking_uri: str,
               experiment: str, parent_run: str) -> LocalTrials | DeployedTrials:
    """Where this study's trials run: task runs in this process, or flow runs of automl.trial_deployment."""
    if spec.automl.trial_deployment:
        Path(spec.results_dir).mkdir(parents=True, exist_ok=True)  # trials on workers check that they see it
        for what, url in (("automl.storage", storage_url(spec)), ("the MLflow tracking URI", tracking_uri)):
            if url.startswith(("sqlite:", "file:")) or "://" not in url:
                get_run_logger().warning(
                    "%s is %s, a file on this machine: workers of %s on other machines cannot reach it (use a "
                    "PostgreSQL study and an MLflow server for those)", what, shown(url), spec.automl.trial_deployment)
        return DeployedTrials(spec, study, storage, lambda t: {
            "spec": public_dict(spec), "study": study.study_name, "trial_id": t._trial_id, "number": t.number,
            "label": trial_label(t.params), "tracking_uri": tracking_uri, "experiment": experiment,
            "parent_run": parent_run})
    task = trial_task(spec)
    return LocalTrials(lambda t: task.submit(study, storage, t, t.number, trial_label(t.params), spec, tracking_uri,
                                             experiment, parent_run))


def attach(spec: ExperimentSpec, name: str, trial_id: int) -> tuple[optuna.Study, optuna.storages.RDBStorage,
                                                                     optuna.Trial]:
    """The study and a trial the study flow asked for, reopened in a trial's own flow run (another process or
    machine): reports, pruning decisions and the result go to the same study."""
    storage = rdb_storage(spec)
    try:
        with heartbeat_warnings_off():
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner(spec))
    except KeyError:
        raise RuntimeError(f"no Optuna study {name!r} in {shown(storage_url(spec))}: the trial's flow run must "
                           f"reach the study flow's automl.storage") from None
    trial = optuna.Trial(study, trial_id)
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        raise RuntimeError(f"trial {trial.number} of study {name!r} is {storage.get_trial(trial_id).state.name}, not "
                           f"running: it was told already (a flow run started twice?); not trained again")
    return study, storage, trial


def study_rows(study: optuna.Study) -> list[dict]:
    """Every trial of the study as a table row (number, state, mIoU, epochs, params, run)."""
    return [{"trial": t.number, "state": t.state.name,
             "val mIoU": None if t.value is None else round(t.value, 4), "epochs": t.user_attrs.get("epochs"),
             "params": trial_label(t.params), "run": t.user_attrs.get("run_key", ""),
             "note": t.user_attrs.get("warm_start") or t.user_attrs.get("error", "")
             or (INTERRUPTED if was_interrupted(t) else "")} for t in study.trials]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The completed trial with the highest validation mIoU (pruned and failed trials never win)."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs.get("checkpoint")]
    if not complete:
        raise RuntimeError(f"study {study.study_name!r}: no trial completed with a checkpoint; see the failed "
                           f"trials' `error` attributes in the study and the trial runs in MLflow")
    return max(complete, key=lambda t: t.value)


def selection(study: optuna.Study) -> Selection:
    """The best trial's best checkpoint, with every trial of the study for the model card and the charts."""
    best = best_trial(study)
    trials = tuple(Trial(t.number, t.state.name, t.value if t.value is not None else
                         (max(t.intermediate_values.values()) if t.intermediate_values else None),
                         t.user_attrs.get("epochs"), t.params) for t in study.trials)
    return Selection(checkpoint=best.user_attrs["checkpoint"], mIoU=best.value, trial=best.number,
                     params=best.params, study=study.study_name, trials=trials)
