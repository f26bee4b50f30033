"""The trial flow on a worker: it refuses to train where it cannot hand its result back, and never trains a trial
the study was told already (its spread over real workers is tested in test_deployment.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from flows.trial import trial
from oneformer.errors import SpecError
from oneformer.spec import load_spec, public_dict
from tasks.automl import attach, open_study, rdb_storage


def test_a_worker_without_the_study_flows_results_folder_refuses_the_trial(small_synth: Path, tmp_path: Path) -> None:
    spec = load_spec(small_synth, {"results_dir": str(tmp_path / "not-mounted-here")})
    with pytest.raises(SpecError, match=r"results_dir .*not-mounted-here does not exist on worker .*same path"):
        trial(spec=public_dict(spec), study="s", trial_id=1, number=0, label="x", tracking_uri="sqlite:///x.db",
              experiment="0", parent_run="r")


def test_a_worker_that_does_not_see_the_staged_data_refuses_the_trial(small_synth: Path, tmp_path: Path) -> None:
    spec = load_spec(small_synth, {"results_dir": str(tmp_path), "dataset.train.images": str(tmp_path / "cache/x")})
    with pytest.raises(SpecError, match=r"dataset.train.images: .*cache/x\n.*not found on worker .*ONEFORMER_CACHE"):
        trial(spec=public_dict(spec), study="s", trial_id=1, number=0, label="x", tracking_uri="sqlite:///x.db",
              experiment="0", parent_run="r")


def test_a_trial_told_already_is_not_trained_again(small_synth: Path, tmp_path: Path) -> None:
    spec = load_spec(small_synth, {"results_dir": str(tmp_path)})
    study = open_study(spec, "told", rdb_storage(spec))
    asked = study.ask({"train.optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-3)})
    assert attach(spec, "told", asked._trial_id)[2].number == 0  # a running trial reattaches
    study.tell(asked, 0.5)
    with pytest.raises(RuntimeError, match="trial 0 of study 'told' is COMPLETE, not running.*not trained again"):
        attach(spec, "told", asked._trial_id)
    with pytest.raises(RuntimeError, match="no Optuna study 'elsewhere'"):
        attach(spec, "elsewhere", asked._trial_id)


def test_the_workers_hooks_load_without_the_training_stack() -> None:
    """A worker runs a cancelled or crashed run's hooks in a fresh process that imports the flow's module: while it
    loads Lightning and transformers (8 s of CPU here), the run's trials go on training for nobody."""
    import subprocess
    import sys

    heavy = ("lightning", "transformers", "tasks.automl", "tasks.training")
    probe = (f"import sys, flows.trial, flows.pipeline, tasks.abandon; "
             f"print([m for m in {heavy!r} if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert loaded == "[]", f"the hook modules import {loaded}"
