"""DDP on CPU as it runs inside a Prefect task: two gloo processes spawned by oneformer.training.launch (never a
re-run of the command line), against one process on the same data and seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from oneformer.actions.train import train
from oneformer.artifacts import read_status
from oneformer.model.checkpoint import read_checkpoint
from oneformer.spec import load_spec

pytestmark = pytest.mark.slow

# One epoch from the same initial weights, with the same effective batch (2 x 1 image against 1 x 2) and the same
# number of optimizer steps; only the order of the training images differs. Stated tolerance on the validation
# loss after that epoch (the mean over the same 4 images in both):
VAL_LOSS_RTOL = 0.10


def _run(small_synth: Path, out: Path, processes: int, batch: int, *extra: str) -> dict:
    spec = load_spec(small_synth, [f"results_dir={out}", "train.num_epochs=1", "train.num_gpus=0",
                                   f"train.num_processes={processes}", f"dataset.train.batch_size={batch}",
                                   "dataset.val.batch_size=1", *extra])
    return train(spec)


def test_two_processes_train_like_one_and_write_like_one(small_synth: Path, tmp_path: Path) -> None:
    one = _run(small_synth, tmp_path / "one", 1, 2)
    two = _run(small_synth, tmp_path / "two", 2, 1)
    m1, m2 = one["best"]["metrics"], two["best"]["metrics"]
    assert m1["val_images"] == m2["val_images"] == 4  # every validation image once: none padded in twice
    assert m2["val_loss"] == pytest.approx(m1["val_loss"], rel=VAL_LOSS_RTOL)
    assert 0.0 <= m2["mIoU"] <= 1.0

    for result in (one, two):  # the same files: one checkpoint per epoch, indexed once, status.json once
        folder = Path(result["train_dir"])
        assert [e["epoch"] for e in result["checkpoints"]] == [0]
        assert [s["status"] for s in read_status(folder)] == ["STARTED", "RUNNING", "SUCCESS"]
        assert not list(folder.glob(".ddp-*.json"))
    a, b = (read_checkpoint(r["best"]["path"]) for r in (one, two))
    assert {k: v.shape for k, v in a.state_dict.items()} == {k: v.shape for k, v in b.state_dict.items()}


def test_validation_over_two_processes_scores_the_split_exactly_once(small_synth: Path, tmp_path: Path) -> None:
    """With the smallest learning rate the weights stay (all but) where they started, so validation must agree to
    float precision: the gathered confusion matrix and loss are the whole split's, each image counted once."""
    still = ("train.optim.lr=1e-6", "train.optim.backbone_multiplier=0.1")
    one = _run(small_synth, tmp_path / "one", 1, 2, *still)["best"]["metrics"]
    two = _run(small_synth, tmp_path / "two", 2, 1, *still)["best"]["metrics"]
    assert two["val_images"] == one["val_images"] == 4
    assert two["mIoU"] == pytest.approx(one["mIoU"], abs=1e-4)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-3)


def test_a_trial_is_reported_and_pruned_once_from_rank_zero(small_synth: Path, tmp_path: Path) -> None:
    """An AutoML trial's callbacks in a DDP run: rank 0 alone reports to Optuna, every process stops when it prunes,
    and the launching process learns where it stopped (the callback's state comes back)."""
    import optuna

    from tasks.training import PruneOnPlateau

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/study.db", direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1.1))  # mIoU <= 1 always prunes
    trial = study.ask()
    prune = PruneOnPlateau(trial)
    spec = load_spec(small_synth, [f"results_dir={tmp_path}/r", "train.num_epochs=3", "train.num_gpus=0",
                                   "train.num_processes=2", "dataset.train.batch_size=1"])
    result = train(spec, callbacks=[prune])
    assert prune.pruned_at == 0
    assert [e["epoch"] for e in result["checkpoints"]] == [0]  # stopped after the first epoch, on both processes
    (stored,) = study.get_trials(deepcopy=False)
    assert list(stored.intermediate_values) == [0]  # one report: rank 0's
