"""Every sampler and pruner of the schema, and TAO's algorithm names, on synthetic learning curves (no training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from oneformer.spec import AutoMLConfig, load_spec
from tasks.automl import ask_new, open_study, rdb_storage
from tasks.search_space import search_space

CLASSES = {"tpe": "TPESampler", "random": "RandomSampler", "gp": "GPSampler", "cmaes": "CmaEsSampler"}
PRUNER_CLASSES = {"none": "NopPruner", "successive_halving": "SuccessiveHalvingPruner",
                  "hyperband": "HyperbandPruner", "median": "MedianPruner"}

SAMPLERS = get_args(AutoMLConfig.model_fields["sampler"].annotation)
PRUNERS = get_args(AutoMLConfig.model_fields["pruner"].annotation)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_and_pruner_runs_a_study_in_the_search_space(sampler: str, small_synth: Path,
                                                                   tmp_path: Path) -> None:
    """Each schema sampler proposes new points in the default space (log-scaled floats) plus a categorical key, and
    each pruner stops hopeless trials, on a synthetic learning curve (no training: seconds per combination)."""
    import optuna

    for name in PRUNERS:
        spec = load_spec(small_synth, {"results_dir": str(tmp_path / name), "train.num_epochs": 12,
                                       "automl.sampler": sampler, "automl.pruner": name,
                                       "automl.search_space": {"model.one_former.dec_layers": {"choices": [2, 3]}}})
        study = open_study(spec, f"{sampler}-{name}", rdb_storage(spec))
        space = search_space(spec)
        for n in range(8):
            trial = ask_new(study, space, "k")
            good = n % 2 == 0  # every other trial learns; the rest stay at chance
            for epoch in range(12):
                trial.report((0.8 if good else 0.1) * (epoch + 1) / 12, epoch)
                if trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
            else:
                study.tell(trial, (0.8 if good else 0.1))
        trials = study.trials
        assert type(study.sampler).__name__ == CLASSES[sampler]
        assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8  # eight different points
        assert all(space[k]._contains(space[k].to_internal_repr(v)) for t in trials for k, v in t.params.items())
        states = [t.state.name for t in trials]
        assert states[0] == "COMPLETE" and states.count("COMPLETE") >= 2, (sampler, name, states)
        if name != "none":
            assert "PRUNED" in states, (sampler, name, states)  # the pruner acted on the hopeless curves


@pytest.mark.parametrize(("algorithm", "sampler", "pruner"), [("bayesian", "tpe", "none"),
                                                               ("ASHA", "random", "successive_halving"),
                                                               ("hyperband", "random", "hyperband"),
                                                               ("bohb", "tpe", "hyperband")])
def test_tao_algorithm_names_choose_the_optuna_sampler_and_pruner(algorithm: str, sampler: str, pruner: str,
                                                                  small_synth: Path) -> None:
    spec = load_spec(small_synth, {"automl.automl_algorithm": algorithm, "automl.pruner": "median"})
    assert (spec.automl.sampler, spec.automl.pruner) == (sampler, pruner)  # over the preset's or file's pruner
    assert spec.automl.automl_algorithm is None  # read into sampler and pruner, which the written spec shows
    study = open_study(spec, "tao", optuna_memory())  # the study a run opens uses them
    assert type(study.sampler).__name__ == CLASSES[sampler]
    assert type(study.pruner).__name__ == PRUNER_CLASSES[pruner]
    spec.automl.n_trials = 2
    spec.automl.pruner = "median"  # an assignment afterwards is not mapped back
    assert (spec.automl.sampler, spec.automl.pruner) == (sampler, "median")


@pytest.mark.parametrize("algorithm", ["pbt", "dehb", "bfbo", "hyperband_es", "grid"])
def test_tao_algorithms_without_an_optuna_equivalent_are_refused_with_the_choices(algorithm: str,
                                                                                  small_synth: Path) -> None:
    from oneformer.errors import SpecError

    with pytest.raises(SpecError, match=rf"automl.automl_algorithm: .*'{algorithm}' is .*choose one of bayesian, "
                                        r"asha, hyperband, bohb, or set automl.sampler and automl.pruner"):
        load_spec(small_synth, {"automl.automl_algorithm": algorithm})


def test_a_sampler_that_cannot_propose_names_the_setting(small_synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    spec = load_spec(small_synth, {"automl.sampler": "cmaes"})
    study = open_study(spec, "broken", optuna_memory())

    def missing(*args, **kwargs) -> None:  # noqa: ANN002, ANN003 - as when the cmaes package is not installed
        raise ImportError("No module named 'cmaes'")

    monkeypatch.setattr(optuna.samplers.CmaEsSampler, "infer_relative_search_space", missing)
    with pytest.raises(RuntimeError, match=r"automl.sampler \(CmaEsSampler\) could not propose a trial: "
                                           r"ImportError: No module named 'cmaes'"):
        ask_new(study, search_space(spec), "k")


def optuna_memory():  # noqa: ANN201 - an optuna storage
    """An in-memory Optuna storage: for tests of what a study proposes, not of where it is kept."""
    import optuna

    return optuna.storages.InMemoryStorage()
