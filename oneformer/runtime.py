"""One predictor interface: preprocessing shared by every backend, logits out, post-processing elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from oneformer.checkpoint import load_network, read_checkpoint
from oneformer.data.labelmap import LabelMap
from oneformer.data.transforms import normalize, pad_divisible, resize_pair
from oneformer.tokenizer import TextTable


@dataclass
class Prepared:
    """A network-ready image plus what post-processing needs to map outputs back."""

    pixels: torch.Tensor
    valid_hw: tuple[int, int]
    orig_hw: tuple[int, int]


class Predictor(Protocol):
    """Anything that maps prepared pixels and a task to (class logits [B,Q,C+1], mask logits [B,Q,h,w])."""

    labels: LabelMap
    mean: list[float]
    std: list[float]

    def __call__(self, pixels: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]: ...


def prepare(image: np.ndarray, size: tuple[int, int], mean: list[float], std: list[float], divisor: int = 32
            ) -> Prepared:
    """Resize to the network size (h, w), normalize, pad to a multiple of `divisor`."""
    h0, w0 = image.shape[:2]
    small, _ = resize_pair(image, None, *size)
    return Prepared(pad_divisible(normalize(small, mean, std), divisor)[None], tuple(size), (h0, w0))


class TorchPredictor:
    """PyTorch eager inference from one of our checkpoints."""

    def __init__(self, checkpoint: str | Path, device: str | None = None) -> None:
        ckpt = read_checkpoint(checkpoint)
        self.path = Path(checkpoint)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.net = load_network(ckpt).to(self.device)
        self.labels = ckpt.labels
        data = ckpt.spec.get("dataset", {})
        self.mean = data.get("pixel_mean", [123.675, 116.28, 103.53])
        self.std = data.get("pixel_std", [58.395, 57.12, 57.375])
        self.spec = ckpt.spec
        cfg = self.net.config
        self.text = TextTable(self.labels.names, cfg.task_seq_len, cfg.text_encoder_context_length)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.text.task_ids[task].expand(len(pixels), -1).to(self.device)
        out = self.net(pixel_values=pixels.to(self.device), task_inputs=tokens)
        return out.class_queries_logits.float().cpu(), out.masks_queries_logits.float().cpu()


def open_predictor(path: str | Path) -> Predictor:
    """The predictor for a model file, chosen by its kind."""
    return TorchPredictor(path)
