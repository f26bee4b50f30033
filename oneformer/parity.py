"""How closely a converted model matches its source, on real images: max abs differences and label agreement."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from oneformer.data.readers import list_images, read_image
from oneformer.data.staging import stage
from oneformer.errors import DataError
from oneformer.postprocess import semantic_scores
from oneformer.runtime import ModelInfo, Outputs, prepare
from oneformer.spec import ExperimentSpec

FIELDS = ("class_logits", "mask_logits", "scores", "labels")


def sample_images(spec: ExperimentSpec, n: int, purpose: str) -> list[Path]:
    """Up to n real images: validation first, then test, inference and calibration sets."""
    ds = spec.dataset
    for key, value in (("dataset.val.images", ds.val.images), ("dataset.test.images", ds.test.images),
                       ("inference.images_dir", spec.inference.images_dir),
                       ("dataset.quant_calibration_dataset.images_dir", ds.quant_calibration_dataset.images_dir)):
        if value:
            return list_images(stage(value, key), key)[:n]
    raise DataError(f"{purpose} needs real images to compare on: set dataset.val.images "
                    f"(or dataset.test.images, inference.images_dir)")


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


def sha256(path: Path) -> str:
    """Content digest, so an artifact names exactly what it came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, data: dict) -> None:
    """Write whole or not at all."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
