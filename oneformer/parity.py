"""How closely a converted model matches its source, on real images: max abs differences and label agreement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from oneformer.data.readers import list_images, read_image
from oneformer.data.staging import stage
from oneformer.errors import DataError
from oneformer.runtime.postprocess import semantic_scores
from oneformer.runtime.predictor import ModelInfo, Outputs, prepare
from oneformer.spec import ExperimentSpec

FIELDS = ("class_logits", "mask_logits", "scores", "labels")
# Where a parity check finds real images, in order of preference.
IMAGE_SOURCES = ("dataset.val.images", "dataset.test.images", "inference.images_dir",
                 "dataset.quant_calibration_dataset.images_dir")


def sample_images(spec: ExperimentSpec, n: int, purpose: str) -> list[Path]:
    """Up to n real images: validation first, then test, inference and calibration sets."""
    for key in IMAGE_SOURCES:
        if value := spec.value_at(key):
            return list_images(stage(value, key), key)[:n]
    raise DataError(f"{purpose} needs real images to compare on: set {' or '.join(IMAGE_SOURCES)}")


def label_map(out: Outputs) -> torch.Tensor:
    """Per-pixel labels at the graph's output resolution, whatever the graph outputs."""
    if out.labels is not None:
        return out.labels
    scores = out.scores if out.scores is not None else semantic_scores(out.class_logits, out.mask_logits)
    return scores.argmax(1)


def compare(reference: Callable[[torch.Tensor], Outputs], candidate: Callable[[torch.Tensor], Outputs],
            images: list[Path], info: ModelInfo) -> dict:
    """Run both on the same prepared images; the largest difference per output and the label agreement."""
    diffs: dict[str, float] = {}
    same = total = 0
    for path in images:
        prep = prepare(read_image(path), tuple(info.input_size), info.mean, info.std, info.size_divisibility)
        a, b = reference(prep.pixels), candidate(prep.pixels)
        for name in FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            if x is not None and y is not None and name != "labels":
                diffs[name] = max(diffs.get(name, 0.0), float((x.float() - y.float()).abs().max()))
        la, lb = label_map(a), label_map(b)
        same += int((la == lb).sum())
        total += la.numel()
    return {"images": len(images), "max_abs_diff": diffs, "agreement": same / max(total, 1)}
