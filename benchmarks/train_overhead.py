"""Training overhead: Lightning + our data pipeline vs the bare model step on the same batches (JSON out).

Both run in this process on the smoke model and the synthetic dataset: first the bare loop over batches
prepared in memory (forward + backward + optimizer step only), then `Trainer.fit` for the same number of
steps with the real DataLoader (decode, augment, targets in workers) and Lightning's loop. The goal is
`overhead_pct <= 10`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import pytorch_lightning as pl
import torch

from oneformer.data.datasets import SegmentationDataModule, read_labels
from oneformer.data.synth import generate
from oneformer.model import hf_config, num_text
from oneformer.spec import load_spec
from oneformer.tokenizer import TextTable
from oneformer.training.module import SegmentationModule
from oneformer.training.train import build_trainer


class EpochTimer(pl.Callback):
    """Wall time of the training epoch (data loading and Lightning's loop included)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the spec's)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    overrides = [f"results_dir={tmp}/results", "dataset.val.annotations=null", "train.num_epochs=1",
                 f"train.iters_per_epoch={args.steps}", "train.checkpoint_interval=1000"]
    if args.workers is not None:
        overrides.append(f"dataset.train.num_workers={args.workers}")
    spec = load_spec(generate(f"{tmp}/data", train=args.steps * 4, val=4, size=128), overrides)
    spec.train.checkpoint_interval = 10**6
    labels = read_labels(spec)
    config = hf_config(spec.model, labels.names)
    text = TextTable(labels.names, config.task_seq_len, config.text_encoder_context_length)
    data = SegmentationDataModule(spec, labels, text, num_text(config))

    # Bare loop: the same model, optimizer and batches, nothing else.
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(spec, config, labels)
    loader = data.train_dataloader()
    batches = list(torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size,
                                               collate_fn=loader.collate_fn, shuffle=True))[: args.steps]
    opt = torch.optim.AdamW(module.net.parameters(), lr=spec.train.optim.lr)
    module.net.train()

    def bare(n: int) -> float:
        t0 = time.perf_counter()
        for b in batches[:n]:
            out = module.net(pixel_values=b["pixel_values"], task_inputs=b["task_inputs"],
                             text_inputs=b["text_inputs"], mask_labels=b["mask_labels"],
                             class_labels=b["class_labels"], pixel_mask=b["pixel_mask"])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(module.net.parameters(), spec.train.clip_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    bare(4)  # warm-up
    bare_s = bare(args.steps)

    pl.seed_everything(0, verbose=False)
    timer = EpochTimer()
    trainer = build_trainer(spec, spec.action_dir("train"), callbacks=[timer])
    trainer.fit(SegmentationModule(spec, config, labels), datamodule=data)
    full_s = timer.seconds
    print(json.dumps({
        "benchmark": "train_overhead", "steps": args.steps, "batch_size": spec.dataset.train.batch_size,
        "num_workers": spec.dataset.train.num_workers, "torch_threads": torch.get_num_threads(),
        "bare_step_s": round(bare_s / args.steps, 4), "lightning_step_s": round(full_s / args.steps, 4),
        "bare_total_s": round(bare_s, 3), "lightning_total_s": round(full_s, 3),
        "ratio": round(full_s / bare_s, 3), "overhead_pct": round(100 * (full_s / bare_s - 1), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
