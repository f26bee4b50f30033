"""Image in, segmentation out: the one path from pixels to named segments that the inference action and the
registered MLflow model share, so a pulled model predicts exactly what `oneformer inference` writes."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from oneformer.errors import DataError, OneFormerError
from oneformer.runtime.postprocess import InstancePrediction, PanopticPrediction, instance, panoptic
from oneformer.runtime.predictor import (
    Outputs,
    Predictor,
    Prepared,
    keep_aspect,
    network_size,
    prepare,
    run_batch,
    stack,
)

TASKS = ("semantic", "instance", "panoptic")
# The registered model's predict params: "" task is the graph's; auto backend and precision are the fastest
# (file, backend) whose parity passed (tasks/served_model.py)
PREDICT_PARAMS = {"task": "", "backend": "auto", "precision": "auto"}


@dataclass(frozen=True)
class Thresholds:
    """Post-processing settings (the spec's model.test section)."""

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk: int = 100


@dataclass
class Segmentation:
    """One image's result at its own size: a class map, a segment map, and the segments with class names."""

    task: str
    labels: np.ndarray  # [H, W] int32: contiguous class index, -1 where no class was predicted
    segment_ids: np.ndarray  # [H, W] int32: segment id (1..), 0 where no segment
    segments: list[dict[str, Any]]  # id, category (name), category_id (dataset id), isthing, score, area
    panoptic: PanopticPrediction | None = None
    instances: list[InstancePrediction] = field(default_factory=list)  # every top-k instance (COCO results)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON and MLflow's pyfunc output."""
        return {"task": self.task, "label_map": self.labels, "segment_map": self.segment_ids,
                "segments": self.segments}


def to_rgb(value: Any, what: str = "image") -> np.ndarray:
    """An RGB uint8 [H, W, 3] array from a path, encoded bytes (PNG, JPEG, ...), their base64 text, or an array
    (HxWx3, HxWx4, HxW)."""
    if isinstance(value, Path) or (isinstance(value, str) and len(value) < 4096 and Path(value).is_file()):
        value = Path(value).read_bytes()
    elif isinstance(value, str):  # JSON carries encoded images as base64 text (MLflow's scoring server passes it on)
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{what}: {value:.200} is neither an image file nor a base64-encoded image") from None
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            with Image.open(io.BytesIO(bytes(value))) as im:
                return np.array(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{what}: {len(value)} bytes that no image decoder reads ({exc})") from None
    array = np.asarray(value)
    if array.dtype == object:
        array = np.stack([np.asarray(row) for row in array]) if array.ndim == 1 else array.astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise DataError(f"{what}: an array of shape {array.shape} is not an HxWx3 image")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or array.min() < 0 or array.max() > 255:
            raise DataError(f"{what}: {array.dtype} values outside 0-255; pass an HxWx3 uint8 array")
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


def segment(predictor: Predictor, image: np.ndarray, task: str, size: tuple[int, int],
            thresholds: Thresholds = Thresholds(), keep_aspect_ratio: bool = False) -> Segmentation:
    """Resize, normalise and pad `image` for the network, run it for `task`, and map the result back."""
    return segment_batch(predictor, [image], task, size, thresholds, keep_aspect_ratio)[0]


def segment_batch(predictor: Predictor, images: list[np.ndarray], task: str, size: tuple[int, int],
                  thresholds: Thresholds = Thresholds(), keep_aspect_ratio: bool = False) -> list[Segmentation]:
    """`segment` for several images in one forward pass (in the batches the model file takes). `size` is (h, w);
    with `keep_aspect_ratio` each image is resized to fit inside it instead of stretched to it (a fixed-size graph
    always takes its own size)."""
    if task not in TASKS:
        raise OneFormerError(f"task {task!r} is not one of {', '.join(TASKS)}")
    fixed = predictor.info.input_size is not None
    size = network_size(predictor, size)
    info = predictor.info
    preps = [prepare(im, keep_aspect(im.shape[:2], size) if keep_aspect_ratio and not fixed else size, info.mean,
                     info.std, info.size_divisibility) for im in images]
    pixels, preps = stack(preps)
    out = run_batch(predictor, pixels, task)
    return [_result(predictor, out, i, prep, task, thresholds) for i, prep in enumerate(preps)]


def _result(predictor: Predictor, out: Outputs, i: int, prep: Prepared, task: str, thresholds: Thresholds
            ) -> Segmentation:
    """Image i of a batch's outputs as a Segmentation at the image's own size."""
    labels = predictor.labels
    raw = {labels.index[c.id]: c.id for c in labels.categories}  # class index -> the dataset's category id
    ids = np.zeros(prep.orig_hw, dtype=np.int32)
    if task == "semantic":
        label = out.semantic(i, prep).astype(np.int32)
        segments = []
        for n, c in enumerate(np.unique(label), start=1):
            ids[label == c] = n
            segments.append({"id": n, "category": labels.names[c], "category_id": raw.get(int(c), int(c)),
                             "isthing": bool(labels.thing_mask[c]), "score": None, "area": int((label == c).sum())})
        return Segmentation(task, label, ids, segments)
    if task == "panoptic":
        pred = panoptic(*out.logits(i, prep), labels.thing_mask, thresholds.object_mask_threshold,
                        thresholds.overlap_threshold)
        label = np.full(pred.ids.shape, -1, dtype=np.int32)
        segments = []
        for s in pred.segments:
            label[pred.ids == s["id"]] = s["category"]
            segments.append({"id": s["id"], "category": labels.names[s["category"]],
                             "category_id": raw.get(s["category"], s["category"]), "isthing": s["isthing"],
                             "score": round(s["score"], 4), "area": int((pred.ids == s["id"]).sum())})
        return Segmentation(task, label, pred.ids.astype(np.int32), segments, panoptic=pred)
    preds = instance(*out.logits(i, prep), labels.thing_mask, thresholds.topk)
    drawn = [p for p in preds if p.score >= thresholds.object_mask_threshold]  # confident ones are painted
    label = np.full(prep.orig_hw, -1, dtype=np.int32)
    segments = []
    for n, p in sorted(enumerate(drawn, start=1), key=lambda x: x[1].score):  # highest score painted last, on top
        label[p.mask], ids[p.mask] = p.cls, n
    for n, p in enumerate(drawn, start=1):
        segments.append({"id": n, "category": labels.names[p.cls], "category_id": raw.get(p.cls, p.cls),
                         "isthing": True, "score": round(p.score, 4), "area": int((ids == n).sum())})
    return Segmentation(task, label, ids, segments, instances=preds)
