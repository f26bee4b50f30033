"""Callbacks for TAO's on-disk contract: epoch-step checkpoints, the latest link, checkpoints.json, status.json."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl

from oneformer.artifacts import StatusWriter, link
from oneformer.model.checkpoint import NAME, latest_name, read_index, write_index

KPIS = ("mIoU", "val_loss", "train_loss", "val_images", "val_miou", "val_acc")  # the last two: TAO SegFormer's names


def _metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if k in KPIS}


class EpochCheckpoint(pl.Callback):
    """Every `interval` epochs (and at the last) save model_epoch_EEE_step_SSSSS.pth and index it."""

    def __init__(self, train_dir: Path, interval: int, arch: str = "oneformer") -> None:
        self.dir, self.interval, self.arch = Path(train_dir), interval, arch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0)
        if (epoch + 1) % self.interval and not last:
            return
        path = self.dir / NAME.format(epoch=epoch, step=trainer.global_step)
        trainer.save_checkpoint(path, weights_only=False)  # optimizer and loop state too, for resuming
        if trainer.is_global_zero:
            # index first, link last: a run killed in between resumes from the older link and redoes this epoch
            # (its entry replaced by path), so the index never misses a checkpoint the link points at
            entries = [e for e in read_index(self.dir) if e["path"] != str(path)]
            entries.append({"path": str(path), "epoch": epoch, "step": trainer.global_step,
                            "metrics": _metrics(trainer)})
            write_index(self.dir, entries)
            link(self.dir / latest_name(self.arch), path.name)


class _RankZeroWriter:
    """A StatusWriter that writes from the DDP process of global rank 0 only (one status.json, as TAO's)."""

    def __init__(self, writer: StatusWriter) -> None:
        self.writer, self.trainer = writer, None

    def write(self, status: str, message: str, **fields: object) -> None:
        if self.trainer is None or self.trainer.is_global_zero:
            self.writer.write(status, message, **fields)


class StatusCallback(pl.Callback):
    """status.json lines as TAO writes them: STARTED, RUNNING per epoch with KPIs, SUCCESS or FAILURE."""

    def __init__(self, writer: StatusWriter) -> None:
        self.writer = _RankZeroWriter(writer)
        self.t0 = self.t_epoch = time.monotonic()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.writer.trainer = trainer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.monotonic()
        self.writer.write("STARTED", "Training started", epoch=trainer.current_epoch, max_epoch=trainer.max_epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t_epoch = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_epoch = time.monotonic() - self.t_epoch
        left = (trainer.max_epochs or 0) - trainer.current_epoch - 1
        self.writer.write("RUNNING", "Train epoch finished", epoch=trainer.current_epoch,
                          max_epoch=trainer.max_epochs, step=trainer.global_step,
                          time_per_epoch=round(per_epoch, 3), eta=round(per_epoch * max(left, 0), 1),
                          kpi=_metrics(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer.write("SUCCESS", "Training finished", epoch=trainer.current_epoch,
                          max_epoch=trainer.max_epochs, step=trainer.global_step, kpi=_metrics(trainer))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.writer.write("FAILURE", f"{type(exception).__name__}: {exception}", epoch=trainer.current_epoch,
                          max_epoch=trainer.max_epochs)
