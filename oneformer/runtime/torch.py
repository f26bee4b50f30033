"""The PyTorch backend: eager inference from one of our checkpoints (any of the three networks), on CUDA when
present."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from oneformer.arch_spec import divisibility, predicted_tasks
from oneformer.data.tokenizer import TextTable
from oneformer.model.foreign import read_any
from oneformer.model.network import forward, load_network, uses_text
from oneformer.runtime.postprocess import semantic_scores
from oneformer.runtime.predictor import ModelInfo, Outputs, check_answers
from oneformer.spec import PIXEL_MEAN, PIXEL_STD

if TYPE_CHECKING:
    from oneformer.spec import ExperimentSpec


class TorchPredictor:
    """PyTorch eager inference from one of our checkpoints (semantic answered as scores, like exports)."""

    batch_range: tuple[int, int | None] = (1, None)
    backend = "torch"
    precision = "fp32"  # checkpoints run as trained-for inference: float32 weights and activations

    def __init__(self, checkpoint: str | Path, device: str | None = None, spec: ExperimentSpec | None = None,
                 key: str | None = None) -> None:
        """`spec` describes the network of a checkpoint written elsewhere (TAO, Detectron2), which carries no config
        of its own; `key` is the spec key that named the file, for errors."""
        ckpt = read_any(checkpoint, key, spec=spec)
        self.path = Path(checkpoint)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.net = load_network(ckpt).to(self.device)
        self.labels = ckpt.labels
        data, model = ckpt.spec.get("dataset", {}), ckpt.spec.get("model", {})
        arch = self.net.config.model_type
        self.info = ModelInfo(task=None, output="logits", input_size=None,
                              mean=data.get("pixel_mean", list(PIXEL_MEAN)), std=data.get("pixel_std", list(PIXEL_STD)),
                              label_map=ckpt.label_map,
                              contiguous_id=ckpt.contiguous_id, source=str(self.path),
                              size_divisibility=divisibility(arch, model), arch=arch,
                              tasks=list(predicted_tasks(arch, model.get("mode"))))
        cfg = self.net.config
        self.text = TextTable(self.labels.names, cfg.task_seq_len, cfg.text_encoder_context_length) \
            if uses_text(self.net) else None

    def task_inputs(self, task: str, batch: int) -> torch.Tensor | None:
        """OneFormer's task tokens for a batch; None for the networks that take no task."""
        return self.text.task_ids[task].expand(batch, -1).to(self.device) if self.text is not None else None

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, task: str) -> Outputs:
        check_answers(self.info, task, self.path)
        out = forward(self.net, pixels.to(self.device), self.task_inputs(task, len(pixels)))
        if "scores" in out:
            return Outputs(scores=out["scores"].float().cpu())
        cls, masks = out["class_logits"].float(), out["mask_logits"].float()
        if task == "semantic":
            return Outputs(scores=semantic_scores(cls, masks).cpu())
        return Outputs(class_logits=cls.cpu(), mask_logits=masks.cpu())
