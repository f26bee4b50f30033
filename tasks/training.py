"""Training tasks: one run of the train action, reported to MLflow per epoch and, in a study, to Optuna."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from mlflow.entities import Metric
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from oneformer.actions.train import train
from oneformer.model.checkpoint import best_entry, read_index
from oneformer.spec import ExperimentSpec
from tasks import tracking


class RunLogger(Logger):
    """Lightning's metrics into one MLflow run, through a client bound to the run's tracking URI.

    Written here because Lightning's MLFlowLogger sets MLflow's process-wide tracking URI on first use, which then
    leaks into every later flow the same worker process runs. The run's owner closes the run, not this logger.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        super().__init__()
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.client = tracking.client(tracking_uri)

    def __reduce__(self) -> tuple:
        """Rebuilt from its URI and run in a spawned DDP process (a client holds connections, never pickled)."""
        return RunLogger, (self.tracking_uri, self.run_id)

    @property
    def name(self) -> str:
        """Lightning's name for this logger."""
        return "mlflow"

    @property
    def version(self) -> str:
        """The MLflow run the metrics go to."""
        return self.run_id

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """One batch of metrics at a training step."""
        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if rows:
            self.client.log_batch(self.run_id, metrics=rows)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: the flows log the whole spec as the run's params."""


class PruneOnPlateau(pl.Callback):
    """Report each epoch's validation mIoU to an Optuna trial and stop training when the pruner says so. Under DDP
    rank 0 reports and decides, and every process stops with it (the decision is broadcast)."""

    def __init__(self, trial: Any, metric: str = "mIoU") -> None:  # optuna.Trial; typed loosely for Lightning
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        prune = False
        if trainer.is_global_zero:
            self.trial.report(float(value), step=trainer.current_epoch)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True  # stop after this epoch's checkpoint, so the trial folder stays usable

    def state_dict(self) -> dict[str, Any]:
        """Where it pruned: handed back from a DDP run's rank 0 to the launching process."""
        return {"pruned_at": self.pruned_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The state `state_dict` gave."""
        self.pruned_at = state_dict.get("pruned_at")


class TrialTimeout(TimeoutError):
    """A trial trained past automl.trial_timeout."""


class TrialDeadline(pl.Callback):
    """Stop a trial at automl.trial_timeout from inside its training loop, after a step or a validation batch.

    Written here because Prefect's task timeout raises asynchronously into the worker thread: measured here, it let a
    trial run past a 1 s timeout to completion. Every process checks the same wall-clock deadline (spawned DDP
    processes included); under DDP rank 0 decides, so all ranks stop together."""

    def __init__(self, seconds: float, started: float | None = None) -> None:
        self.seconds = seconds
        self.deadline = (time.time() if started is None else started) + seconds

    def check(self, trainer: pl.Trainer) -> None:
        """Raise TrialTimeout once the deadline has passed."""
        expired = time.time() > self.deadline
        if trainer.world_size > 1:
            expired = trainer.strategy.broadcast(expired, src=0)
        if expired:
            raise TrialTimeout(f"ran past automl.trial_timeout ({self.seconds:g} s) in epoch {trainer.current_epoch} "
                               f"at step {trainer.global_step}; raise automl.trial_timeout to train it to its budget")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Setting up (data, model, a resumed checkpoint) counts against the timeout too."""
        self.check(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """After each training step."""
        self.check(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """After each validation batch (validation of a big split is long too)."""
        if not trainer.sanity_checking:
            self.check(trainer)


def epochs_run(train_dir: Path) -> int:
    """Epochs completed, from the checkpoint index (every epoch is indexed at checkpoint_interval 1)."""
    entries = read_index(train_dir)
    return max((e["epoch"] for e in entries), default=-1) + 1


def run_training(spec: ExperimentSpec, tracking_uri: str, run_id: str,
                 callbacks: list[pl.Callback] | None = None) -> dict:
    """The train action with per-epoch metrics going to the MLflow run `run_id`; returns the best entry."""
    result = train(spec, callbacks=callbacks, logger=RunLogger(tracking_uri, run_id))
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
