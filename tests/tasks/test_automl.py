"""An Optuna study over real training runs: pruning, a failed trial that does not stop the study, selection, and
the study's life over many runs (new trials each run, a resumed run's own budget, warm start, no repeats)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prefect import flow

from oneformer.model.checkpoint import LATEST, best_entry, read_index
from oneformer.spec import load_spec
from tasks import tracking
from tasks.automl import best_trial, open_study, pruner, rdb_storage, run_study, storage_url, study_name

pytestmark = pytest.mark.slow
GOOD = {"train.optim.backbone_multiplier": 1.0, "train.optim.weight_decay": 1e-4, "model.one_former.hidden_dim": 64}


@flow
def study_flow(spec, uri: str, run_key: str = "night-1", key: str = "k",  # noqa: ANN001
               champion: tuple[str, dict] | None = None) -> list[dict]:
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, "automl-test", Path(spec.results_dir) / "mlartifacts")
    study = run_study(spec, uri, exp, tracking.start_run(c, exp, "parent"), key, run_key, champion)
    return [{"number": t.number, "state": t.state.name, "value": t.value, "attrs": t.user_attrs,
             "params": t.params} for t in study.trials]


def test_study_prunes_a_hopeless_trial_records_a_failure_and_picks_the_best(prefect_api, learn_spec: Path,  # noqa: ANN001
                                                                             tmp_path: Path) -> None:
    spec = load_spec(learn_spec, {
        "results_dir": str(tmp_path), "train.num_epochs": 6, "automl.n_trials": 4,
        "automl.pruner": "median", "automl.study_name": "prune-test",
        "automl.search_space": {"train.optim.lr": {"min": 1e-6, "max": 1e-2},
                                "model.one_former.hidden_dim": {"choices": [64, 66]}}})
    study = open_study(spec, "prune-test-k", rdb_storage(spec))
    for lr, hidden in ((1e-3, 64), (2e-3, 64), (1e-6, 64), (1e-3, 66)):  # good, good, hopeless, broken model
        study.enqueue_trial({**GOOD, "train.optim.lr": lr, "model.one_former.hidden_dim": hidden})

    trials = study_flow(spec, f"sqlite:///{tmp_path}/mlflow.db")

    states = [t["state"] for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"], trials
    assert trials[2]["attrs"]["epochs"] < 6  # stopped early: the point of pruning
    assert "hidden_dim" in trials[3]["attrs"]["error"] or "divisible" in trials[3]["attrs"]["error"]
    best = best_trial(open_study(spec, "prune-test-k", rdb_storage(spec)))
    assert best.number in (0, 1) and best.value == max(t["value"] for t in trials[:2])
    hopeless = max(open_study(spec, "prune-test-k", rdb_storage(spec)).trials[2].intermediate_values.values())
    assert best.value > 0.1 and best.value > hopeless + 0.05  # the good trials learned; lr=1e-6 did not
    train_dir = Path(best.user_attrs["results_dir"]) / "train"
    assert best.user_attrs["checkpoint"] == best_entry(read_index(train_dir))["path"]  # by metric, not "latest"
    assert len(read_index(train_dir)) == 6  # every epoch indexed with its metrics...
    kept = {p.name for p in train_dir.glob("model_epoch_*.pth")}  # ...but only the best and the last kept on disk
    assert kept == {Path(best.user_attrs["checkpoint"]).name, (train_dir / LATEST).resolve().name}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_parallel_trials_share_one_study_and_a_rerun_continues_it(backend: str, request: pytest.FixtureRequest,
                                                                   prefect_api, small_synth: Path,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    import optuna
    from mlflow import MlflowClient

    overrides = {"results_dir": str(tmp_path), "train.num_epochs": 2, "automl.n_trials": 2, "automl.n_jobs": 2,
                 "automl.pruner": "none", "automl.sampler": "random", "automl.study_name": f"parallel-{backend}"}
    if backend == "postgresql":
        overrides["automl.storage"] = request.getfixturevalue("postgres_url")
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    first = study_flow(load_spec(small_synth, overrides), uri)

    assert [t["state"] for t in first] == ["COMPLETE", "COMPLETE"], first
    folders = {t["attrs"]["results_dir"] for t in first}
    assert len(folders) == 2 and all(Path(t["attrs"]["checkpoint"]).is_file() for t in first)
    runs = MlflowClient(uri).search_runs([tracking.experiment_id(MlflowClient(uri), "automl-test", None)])
    (a, b) = sorted((r for r in runs if "optuna.trial" in r.data.tags), key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time  # the second trial started before the first ended: in parallel

    spec = load_spec(small_synth, {**overrides, "automl.n_trials": 1})
    again = study_flow(spec, uri, "night-2")  # the next night: one new trial in the same study

    assert len(again) == 3 and again[:2] == first and again[2]["state"] == "COMPLETE"
    assert len({tuple(sorted(t["params"].items())) for t in again}) == 3  # nothing re-proposed
    resumed = study_flow(spec, uri, "night-2")  # night 2 resumed after it finished its trial: nothing to run
    assert len(resumed) == 3
    if backend == "postgresql":  # the study lives in the server, where another machine's worker would find it
        assert len(optuna.load_study(study_name="parallel-postgresql-k", storage=storage_url(spec)).trials) == 3
        assert not (tmp_path / "automl" / "optuna.db").exists()


def test_new_study_warm_starts_from_the_champion_and_never_repeats(prefect_api, small_synth: Path,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    overrides = {"results_dir": str(tmp_path), "train.num_epochs": 1, "automl.n_trials": 2, "automl.pruner": "none",
                 "automl.search_space": {"train.optim.lr": {"min": 1e-4, "max": 1e-2},
                                         "train.optim.weight_decay": {"choices": [1e-5, 1e-4]}}}
    spec = load_spec(small_synth, overrides)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    champion = {"train.optim.lr": 0.00123, "train.optim.weight_decay": 1e-4, "model.gone": 3}
    trials = study_flow(spec, uri, "night-1", "new-data", ("synthetic v1", champion))
    assert {k: trials[0]["params"][k] for k in ("train.optim.lr", "train.optim.weight_decay")} == \
        {"train.optim.lr": 0.00123, "train.optim.weight_decay": 1e-4}  # the rest of the space is sampled
    assert trials[0]["attrs"]["warm_start"] == "synthetic v1"
    study = open_study(spec, study_name(spec, "new-data"), rdb_storage(spec))
    trial = study.ask()  # a resumed study's sampler is seeded anew: its next proposal is not a replay of trial 0
    assert trial.number == 2
    again = study_flow(load_spec(small_synth, {**overrides, "automl.n_trials": 1}), uri, "night-2", "new-data",
                       ("synthetic v9", {"train.optim.lr": 0.005}))
    assert [t["params"] for t in again[:2]] == [t["params"] for t in trials]  # the same study, continued
    assert "warm_start" not in again[-1]["attrs"]  # warm start only seeds a new study
    finished = [json.dumps(t["params"], sort_keys=True) for t in again if t["state"] != "FAIL"]
    assert len(finished) == len(set(finished))


def test_unreachable_study_database_is_a_clear_error_without_the_password(small_synth: Path, tmp_path: Path) -> None:
    spec = load_spec(small_synth, {"results_dir": str(tmp_path), "automl.storage": "postgresql://u:s3cr3t@127.0.0.1:1/x"})
    with pytest.raises(RuntimeError, match=r"automl.storage: cannot open .*u:\*\*\*@127.0.0.1:1/x") as err:
        rdb_storage(spec)
    assert "s3cr3t" not in str(err.value)


@pytest.mark.parametrize("name", ["successive_halving", "median"])
def test_pruner_stops_lagging_trials_early_and_lets_leading_ones_finish(name: str, small_synth: Path,
                                                                        tmp_path: Path) -> None:
    import optuna

    spec = load_spec(small_synth, {"results_dir": str(tmp_path), "train.num_epochs": 12, "automl.pruner": name})
    study = optuna.create_study(direction="maximize", pruner=pruner(spec))

    def epochs_spent(curve: list[float]) -> int:
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return step + 1
        study.tell(trial, max(curve))
        return len(curve)

    rising = [0.05 * (epoch + 1) for epoch in range(12)]
    spent = [epochs_spent([v * scale for v in rising]) for scale in (1.0, 1.1, 0.2, 0.2, 1.2)]

    assert spent == [12, 12, 2, 2, 12]  # the two laggards stop after 2 of 12 epochs; the new leader runs on


def test_a_trial_failed_by_the_stale_heartbeat_check_is_retried_once(tmp_path: Path) -> None:
    """A rerun long after a kill finds the dead trial already FAIL (Optuna's stale-heartbeat check, in open_study):
    it is retried with its parameters from its own folder, counted as interrupted, and not retried twice."""
    import time

    import optuna
    from optuna.trial import TrialState

    from tasks.automl import retry_interrupted, study_rows, was_interrupted

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="stale", storage=storage, direction="maximize")
    space = {"train.optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    trial = study.ask(space)
    trial.set_user_attr("run_key", "night-1")
    trial.set_user_attr("results_dir", str(tmp_path / "trial_000"))
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # the process "died": no heartbeat past the grace period
    optuna.storages.fail_stale_trials(study)
    dead = study.trials[0]
    assert dead.state == TrialState.FAIL and "error" not in dead.user_attrs
    assert was_interrupted(dead)

    assert retry_interrupted(study, storage, "night-1") == [0]
    retry = study.ask(space)
    assert retry.params == dead.params
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["resume_from"] == str(tmp_path / "trial_000")
    study.tell(retry, 0.5)
    assert retry_interrupted(study, storage, "night-1") == []  # once
    assert study_rows(study)[0]["note"] == "interrupted"


def test_a_new_trial_starts_as_soon_as_one_ends(prefect_api, small_synth: Path, tmp_path: Path,  # noqa: ANN001
                                                caplog: pytest.LogCaptureFixture) -> None:
    """n_jobs=2 is a rolling pool, not batches: with a long trial and a short one running, the third trial starts
    when the short one ends, while the long one is still training."""
    caplog.set_level(logging.INFO)
    overrides = {"results_dir": str(tmp_path), "automl.n_trials": 3, "automl.n_jobs": 2, "automl.pruner": "none",
                 "automl.sampler": "random", "automl.study_name": "rolling",
                 "automl.search_space": {"train.num_epochs": {"choices": [1, 5]}}}
    spec = load_spec(small_synth, overrides)
    study = open_study(spec, study_name(spec, "k"), rdb_storage(spec))
    for epochs in (5, 1, 1):  # trial 0 long, trials 1 and 2 short
        study.enqueue_trial({"train.num_epochs": epochs})
    trials = study_flow(spec, f"sqlite:///{tmp_path}/mlflow.db")
    assert [(t["number"], t["state"], t["attrs"]["epochs"]) for t in trials] == \
        [(0, "COMPLETE", 5), (1, "COMPLETE", 1), (2, "COMPLETE", 1)]
    timed = {t.number: t for t in open_study(spec, study_name(spec, "k"), rdb_storage(spec)).trials}
    assert timed[1].datetime_complete <= timed[2].datetime_start < timed[0].datetime_complete
    assert "ended without a result" not in caplog.text and "trial 2 COMPLETE" in caplog.text  # no false alarm


def test_the_retry_of_an_interrupted_trial_is_judged_on_its_whole_learning_curve(tmp_path: Path) -> None:
    import optuna

    from tasks.automl import carry_history, retry_interrupted

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    sha = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4)
    study = optuna.create_study(study_name="retry", storage=storage, direction="maximize", pruner=sha)
    weaker = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    weaker.set_user_attr("run_key", "earlier night")
    for step, value in enumerate([0.02, 0.05]):
        weaker.report(value, step)
        weaker.should_prune()
    study.tell(weaker, 0.05)
    killed = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    killed.set_user_attr("run_key", "k")
    for step, value in enumerate([0.06, 0.10, 0.11, 0.12, 0.116]):  # epochs 0-4, then the process was killed
        killed.report(value, step)
        assert not killed.should_prune()

    assert retry_interrupted(study, storage, "k") == [1]
    retry = study.ask()
    carry_history(study, storage, retry)
    assert study.trials[retry.number].intermediate_values == {0: 0.06, 1: 0.1, 2: 0.11, 3: 0.12, 4: 0.116}
    retry.report(0.033, 5)  # a dip in its first epoch after the checkpoint
    assert not retry.should_prune()  # judged where the killed trial stood (rung 1 of 4 epochs), not as a new trial

    fresh = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    fresh.report(0.033, 5)
    assert fresh.should_prune()  # the same figure with no history is pruned: what the retry was before
