"""Training overhead: Lightning + our data pipeline vs the bare model step on the same batches (JSON out).

All three run in this process on the smoke model and the synthetic dataset, in alternating rounds (the
ratios are paired per round and the median round counts, so a noisy neighbour hurts both sides alike):
- bare: forward + backward + clip + the trainer's own optimizer and schedule over batches prepared in memory;
- lightning_memory: `Trainer.fit` over the same in-memory batches (Lightning's loop alone);
- lightning: `Trainer.fit` with the real DataLoader (decode, augment, targets) and Lightning's loop.
Each round first runs the real loader and records its batches; the other two then run on exactly those.
The goal is `overhead_pct <= 10` (lightning vs bare).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import pytorch_lightning as pl
import torch

from oneformer.data.datasets import SegmentationDataModule, read_labels
from oneformer.data.synth import generate
from oneformer.data.tokenizer import TextTable
from oneformer.model.network import hf_config, num_text
from oneformer.spec import ExperimentSpec, load_spec
from oneformer.training.module import SegmentationModule
from oneformer.training.optim import build_optimizer, build_schedule
from oneformer.training.trainer import build_trainer


class EpochTimer(pl.Callback):
    """Wall time of the epoch's steps (data loading and Lightning's loop included); keeps the batches seen."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        self.batches.append(batch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: dict,
                           batch_idx: int) -> None:
        self.seconds = time.perf_counter() - self.t0  # the last batch's value stands: epoch-end saving excluded


def bare(module: SegmentationModule, spec: ExperimentSpec, batches: list[dict]) -> float:
    """Seconds for the bare loop: the network's step and nothing else."""
    opt = spec.train.optim
    optimizer = build_optimizer(module.net, opt)
    schedule = build_schedule(optimizer, opt, len(batches), 1)
    module.net.train()
    t0 = time.perf_counter()
    for b in batches:
        out = module.net(pixel_values=b["pixel_values"], task_inputs=b["task_inputs"], text_inputs=b["text_inputs"],
                         mask_labels=b["mask_labels"], class_labels=b["class_labels"], pixel_mask=b["pixel_mask"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.net.parameters(), spec.train.clip_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def lightning(spec: ExperimentSpec, make: callable, loader: object) -> tuple[float, list[dict]]:
    """Seconds for one Trainer.fit epoch over `loader` (a DataModule or a DataLoader), and its batches."""
    timer = EpochTimer()
    trainer = build_trainer(spec, spec.action_dir("train"), callbacks=[timer])
    if isinstance(loader, pl.LightningDataModule):
        trainer.fit(make(), datamodule=loader)
    else:
        trainer.fit(make(), train_dataloaders=loader)
    return timer.seconds, timer.batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the spec's)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    overrides = [f"results_dir={tmp}/results", "dataset.val.annotations=null", "train.num_epochs=1",
                 f"train.iters_per_epoch={args.steps}", f"train.checkpoint_interval={10**6}"]
    if args.workers is not None:
        overrides.append(f"dataset.train.num_workers={args.workers}")
    spec = load_spec(generate(f"{tmp}/data", train=args.steps * 4, val=4, size=128), overrides)
    spec.train.checkpoint_interval = 10**6
    labels = read_labels(spec)
    config = hf_config(spec.model, labels.names)
    text = TextTable(labels.names, config.task_seq_len, config.text_encoder_context_length)
    data = SegmentationDataModule(spec, labels, text, num_text(config))
    def make() -> SegmentationModule:
        pl.seed_everything(0, verbose=False)
        return SegmentationModule(spec, config, labels)

    times: dict[str, list[float]] = {"lightning": [], "bare": [], "lightning_memory": []}
    lightning(spec, make, data)  # warm-up: allocator, kernels, file cache
    for _ in range(args.rounds):
        seconds, batches = lightning(spec, make, data)
        times["lightning"].append(seconds)
        times["bare"].append(bare(make(), spec, batches))
        memory = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
        times["lightning_memory"].append(lightning(spec, make, memory)[0])
    step = {k: statistics.median(v) / args.steps for k, v in times.items()}
    # Paired per round (same batches, back to back), so slow drift of the machine cancels out.
    ratio = statistics.median(a / b for a, b in zip(times["lightning"], times["bare"]))
    loop_ratio = statistics.median(a / b for a, b in zip(times["lightning_memory"], times["bare"]))
    print(json.dumps({
        "benchmark": "train_overhead", "steps": args.steps, "rounds": args.rounds,
        "batch_size": spec.dataset.train.batch_size, "num_workers": spec.dataset.train.num_workers,
        "torch_threads": torch.get_num_threads(), "optimizer": spec.train.optim.type,
        **{f"{k}_step_s": round(v, 4) for k, v in step.items()},
        "rounds_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "ratio": round(ratio, 3),
        "loop_overhead_pct": round(100 * (loop_ratio - 1), 1),
        "overhead_pct": round(100 * (ratio - 1), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
