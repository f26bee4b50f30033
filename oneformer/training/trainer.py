"""The Lightning Trainer as the spec asks for it: devices, DDP, precision, clipping, intervals, and
checkpoint loading that is always weights_only."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from oneformer.artifacts import StatusWriter, atomic_path
from oneformer.model.checkpoint import safe_load
from oneformer.spec import ExperimentSpec, TrainConfig
from oneformer.training.callbacks import EpochCheckpoint, StatusCallback

log = logging.getLogger(__name__)


def devices(cfg: TrainConfig, quiet: bool = False) -> tuple[str, int | list[int]]:
    """Accelerator and devices; TAO's rule: when num_gpus and gpu_ids disagree, the larger wins. On CPU,
    train.num_processes processes."""
    if cfg.num_gpus == 0 or not torch.cuda.is_available():
        if cfg.num_gpus > 0 and not quiet:
            log.warning("no CUDA device: training on CPU (train.num_gpus=%d ignored)", cfg.num_gpus)
        return "cpu", cfg.num_processes
    if len(cfg.gpu_ids) >= cfg.num_gpus:
        return "gpu", list(cfg.gpu_ids)
    return "gpu", cfg.num_gpus


def local_processes(cfg: TrainConfig) -> int:
    """Training processes on this node: one per GPU, or train.num_processes on CPU."""
    devs = devices(cfg, quiet=True)[1]
    return len(devs) if isinstance(devs, list) else devs


class SafeCheckpointIO(pl.plugins.TorchCheckpointIO):
    """Lightning's checkpoint I/O with loading always weights_only (what `fit(ckpt_path=...)` uses to resume):
    Lightning would otherwise leave it to PyTorch's default, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns off."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:  # noqa: ANN001 - Lightning's API
        return safe_load(path, "train.resume_training_checkpoint_path")

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:  # noqa: ANN001 - Lightning's API
        """Written to a hidden sibling and renamed: a process killed mid-write leaves no half checkpoint."""
        with atomic_path(Path(path)) as part:
            super().save_checkpoint(checkpoint, part, storage_options)


def build_trainer(spec: ExperimentSpec, train_dir: Path, callbacks: list[pl.Callback] | None = None,
                  logger: pl.loggers.Logger | bool = False, max_epochs: int | None = None) -> pl.Trainer:
    """A Lightning Trainer configured from the spec (devices, DDP, precision, clipping, intervals)."""
    cfg = spec.train
    accelerator, devs = devices(cfg)
    many = (len(devs) if isinstance(devs, list) else devs) > 1 or cfg.num_nodes > 1
    strategy: str | pl.strategies.Strategy = "auto"
    if many:  # gloo on CPU; the processes are ours (oneformer.training.launch), Lightning joins them
        strategy = pl.strategies.DDPStrategy(find_unused_parameters=True, gradient_as_bucket_view=True,
                                             process_group_backend="gloo" if accelerator == "cpu" else None)
    status = StatusWriter(train_dir)
    return pl.Trainer(
        accelerator=accelerator,
        devices=devs,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        sync_batchnorm=many if cfg.sync_batchnorm is None else cfg.sync_batchnorm,
        use_distributed_sampler=False,  # the data module shards itself: validation without padded duplicates
        precision=cfg.precision,
        max_epochs=max_epochs or cfg.num_epochs,
        limit_train_batches=cfg.iters_per_epoch or 1.0,
        check_val_every_n_epoch=cfg.validation_interval,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.clip_grad_norm or None,
        gradient_clip_algorithm="value" if cfg.clip_grad_type == "value" else "norm",
        plugins=[SafeCheckpointIO()],
        callbacks=[EpochCheckpoint(train_dir, cfg.checkpoint_interval, spec.arch), StatusCallback(status),
                   pl.callbacks.TQDMProgressBar(refresh_rate=10), *(callbacks or [])],
        logger=logger,
        enable_checkpointing=False,
        default_root_dir=str(train_dir),
        log_every_n_steps=10,
        enable_progress_bar=True,
        enable_model_summary=False,
        deterministic=False,
    )
