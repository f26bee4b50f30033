"""The train action: data, model, Lightning trainer, automatic resume, TAO's results layout."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch

from oneformer.artifacts import write_json
from oneformer.data.datasets import SegmentationDataModule
from oneformer.data.tokenizer import TextTable
from oneformer.model.checkpoint import best_entry, read_index
from oneformer.model.network import checkpoint_backbone, freeze, freeze_stages, network_config, num_text
from oneformer.model.pretrained import load_backbone, load_pretrained
from oneformer.spec import ExperimentSpec
from oneformer.training.launch import in_spawned_process, run_processes
from oneformer.training.module import SegmentationModule
from oneformer.training.trainer import build_trainer, local_processes
from oneformer.training.validate import make_results_dir, validate_training

log = logging.getLogger(__name__)


@contextmanager
def training_settings(seed: int) -> Iterator[None]:
    """Seed everything and allow TF32 matmuls while training, then put back the process-wide settings this changed
    (float32 matmul precision, Lightning's seed variables), so later work in the same process is unaffected."""
    precision = torch.get_float32_matmul_precision()
    saved = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


CALLBACK_STATE = ".ddp-callbacks.json"  # rank 0's callback states, handed back to the launching process


def train(spec: ExperimentSpec, callbacks: list[pl.Callback] | None = None,
          logger: pl.loggers.Logger | bool = False) -> dict:
    """Train (or resume) and return the train folder, the best checkpoint entry and the index. With more than one
    process per node (GPUs, or train.num_processes on CPU) the data is validated here, once, then DDP processes are
    spawned (oneformer.training.launch); the callbacks' state comes back from rank 0 (their `state_dict`)."""
    nprocs = local_processes(spec.train)
    if nprocs == 1 or in_spawned_process():
        with training_settings(spec.train.seed):
            return _train(spec, callbacks, logger, deep=spec.train.verify_data == "decode")
    validate_training(spec, deep=spec.train.verify_data == "decode")
    train_dir = make_results_dir(spec, "train")
    (train_dir / CALLBACK_STATE).unlink(missing_ok=True)
    run_processes(_ddp_process, (spec, callbacks, logger), nprocs, spec.train.num_nodes, train_dir)
    if (state_file := train_dir / CALLBACK_STATE).is_file():
        states = json.loads(state_file.read_text())
        state_file.unlink()
        for n, callback in enumerate(callbacks or []):
            if str(n) in states:
                callback.load_state_dict(states[str(n)])
    entries = read_index(train_dir)
    return {"train_dir": str(train_dir), "best": best_entry(entries), "checkpoints": entries}


def _ddp_process(spec: ExperimentSpec, callbacks: list[pl.Callback] | None, logger: pl.loggers.Logger | bool) -> None:
    """One DDP process: the launcher validated the data (every file decoded once); this one reads headers."""
    with training_settings(spec.train.seed):
        result = _train(spec, callbacks, logger, deep=False)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(Path(result["train_dir"]) / CALLBACK_STATE,
                   {str(n): c.state_dict() for n, c in enumerate(callbacks or [])})


def _train(spec: ExperimentSpec, callbacks: list[pl.Callback] | None, logger: pl.loggers.Logger | bool,
           deep: bool) -> dict:
    # Everything read is validated first (the same function as `oneformer check`), so a broken file fails here in
    # seconds; nothing is written before the data, the resume point and the pretrained weights have been read.
    inputs = validate_training(spec, deep=deep)
    labels = inputs.labels
    config = network_config(spec, labels.names)
    text = TextTable(labels.names, config.task_seq_len, config.text_encoder_context_length) \
        if spec.arch == "oneformer" else None
    data = SegmentationDataModule(spec, labels, text, num_text(config) if text else 0, (inputs.train, inputs.val))
    module = SegmentationModule(spec, config, labels)
    if spec.train.pretrained_model:
        load_pretrained(module.net, spec.train.pretrained_model, spec)
    if spec.train.pretrained_backbone:
        load_backbone(module.net, spec.train.pretrained_backbone)
    if spec.train.freeze:
        log.info("froze %d parameter tensors", freeze(module.net, spec.train.freeze))
    if spec.model.backbone.freeze_at:
        log.info("model.backbone.freeze_at=%d: froze %d backbone parameter tensors", spec.model.backbone.freeze_at,
                 freeze_stages(module.net, spec.model.backbone.freeze_at))
    if spec.train.activation_checkpoint or spec.model.backbone.swin.use_checkpoint:
        key = "train.activation_checkpoint" if spec.train.activation_checkpoint else "swin.use_checkpoint"
        if checkpoint_backbone(module.net):
            log.info("%s: the backbone recomputes its activations in backward", key)
        else:
            log.warning("%s: this backbone does not support it; ignored", key)
    train_dir = make_results_dir(spec, "train")
    for part in train_dir.glob(".*.partial"):  # a checkpoint a killed run was writing: never complete, never used
        log.info("train: removing %s, left half-written by a run that was stopped", part.name)
        part.unlink()
    trainer = build_trainer(spec, train_dir, callbacks, logger)
    # weights_only explicitly (and SafeCheckpointIO in the trainer): never PyTorch's default, which an environment
    # variable can turn into running the checkpoint's code.
    resume = str(inputs.resume) if inputs.resume else None
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    entries = read_index(train_dir)
    return {"train_dir": str(train_dir), "best": best_entry(entries), "checkpoints": entries}
