"""Training tasks: one run of the train action, reported to MLflow per epoch and, in a study, to Optuna."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pytorch_lightning.loggers import MLFlowLogger

from oneformer.actions.train import train
from oneformer.model.checkpoint import best_entry, read_index
from oneformer.spec import ExperimentSpec


class PruneOnPlateau(pl.Callback):
    """Report each epoch's validation mIoU to an Optuna trial and stop training when the pruner says so."""

    def __init__(self, trial: Any, metric: str = "mIoU") -> None:  # optuna.Trial; typed loosely for Lightning
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True  # stop after this epoch's checkpoint, so the trial folder stays usable


def epochs_run(train_dir: Path) -> int:
    """Epochs completed, from the checkpoint index (every epoch is indexed at checkpoint_interval 1)."""
    entries = read_index(train_dir)
    return max((e["epoch"] for e in entries), default=-1) + 1


def run_training(spec: ExperimentSpec, tracking_uri: str, run_id: str,
                 callbacks: list[pl.Callback] | None = None) -> dict:
    """The train action with per-epoch metrics going to the MLflow run `run_id`; returns the best entry."""
    logger = MLFlowLogger(tracking_uri=tracking_uri, run_id=run_id, log_model=False)
    result = train(spec, callbacks=callbacks, logger=logger)
    train_dir = Path(result["train_dir"])
    best = best_entry(read_index(train_dir))
    return {"train_dir": str(train_dir), "best": best, "epochs": epochs_run(train_dir),
            "mIoU": best["metrics"]["mIoU"] if best else None}


@task(name="train", task_run_name="train once with the spec's values", cache_policy=NO_CACHE)
def train_once(spec: ExperimentSpec, tracking_uri: str, run_id: str) -> dict:
    """automl_policy off: one training run, its best checkpoint chosen by validation mIoU."""
    result = run_training(spec, tracking_uri, run_id)
    get_run_logger().info("trained %d epochs in %s; best mIoU %s", result["epochs"], result["train_dir"],
                          result["mIoU"])
    return result
