"""The predictor interface every backend implements: model metadata, preprocessing, and outputs in one form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from oneformer.data.labelmap import LabelMap
from oneformer.data.transforms import normalize, pad_divisible, resize_pair
from oneformer.errors import CheckpointError, OneFormerError
from oneformer.runtime.postprocess import semantic, semantic_scores, to_image_size
from oneformer.spec import PIXEL_MEAN, PIXEL_STD

META_KEY = "oneformer"  # ONNX metadata_props key / engine sidecar holding ModelInfo as JSON


@dataclass
class Prepared:
    """A network-ready image plus what post-processing needs to map outputs back."""

    pixels: torch.Tensor
    valid_hw: tuple[int, int]
    orig_hw: tuple[int, int]


@dataclass
class ModelInfo:
    """What a deployed model file must carry so that no checkpoint or training data is needed to use it."""

    task: str | None  # the task fixed in the graph; None for a checkpoint (any task)
    output: str  # "logits" (class + mask logits), "scores" (semantic per-class), "labels" (label map)
    input_size: list[int] | None  # [H, W] fixed in the graph; None for a checkpoint
    mean: list[float] = field(default_factory=lambda: list(PIXEL_MEAN))
    std: list[float] = field(default_factory=lambda: list(PIXEL_STD))
    label_map: list[dict] = field(default_factory=list)
    contiguous_id: bool = True
    size_divisibility: int = 32
    source: str = ""
    source_sha256: str = ""
    precision: str = "fp32"
    arch: str = "oneformer"  # the network: oneformer, mask2former, segformer
    tasks: list[str] = field(default_factory=lambda: ["semantic", "instance", "panoptic"])  # what it can answer

    def to_json(self) -> str:
        """Serialized for ONNX metadata and engine sidecars."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelInfo:
        """Parsed back, with an error naming the file when it is not ours."""
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: model metadata is unreadable ({exc}); re-export the model") from exc


@dataclass
class Outputs:
    """Network outputs for a batch: class + mask logits, or semantic scores, or a label map."""

    class_logits: torch.Tensor | None = None  # [B, Q, C+1]
    mask_logits: torch.Tensor | None = None  # [B, Q, h, w]
    scores: torch.Tensor | None = None  # [B, C, h, w]
    labels: torch.Tensor | None = None  # [B, H, W] at the input size

    def logits(self, i: int, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """Image i's class logits and mask logits at its original size (instance / panoptic input)."""
        if self.class_logits is None or self.mask_logits is None:
            raise OneFormerError("this model outputs only a semantic map; export with export.task instance/panoptic")
        masks = to_image_size(self.mask_logits[i], tuple(prep.pixels.shape[-2:]), prep.valid_hw, prep.orig_hw)
        return self.class_logits[i], masks

    def semantic(self, i: int, prep: Prepared) -> np.ndarray:
        """Image i's label map [H0, W0] (int32) at its original size."""
        input_hw = tuple(prep.pixels.shape[-2:])
        if self.labels is not None:
            lab = self.labels[i, : prep.valid_hw[0], : prep.valid_hw[1]].float()[None, None]
            return F.interpolate(lab, size=prep.orig_hw, mode="nearest")[0, 0].to(torch.int32).numpy()
        scores = self.scores[i] if self.scores is not None else \
            semantic_scores(self.class_logits[i], self.mask_logits[i])
        return semantic(scores, input_hw, prep.valid_hw, prep.orig_hw)


class Predictor(Protocol):
    """Maps prepared pixels [B,3,H,W] and a task to Outputs; `batch_range` is the (min, max) batch the model file
    takes (max None: any), e.g. (4, 4) for an ONNX file exported with export.batch_size=4. `backend` (torch,
    onnxruntime, openvino, tensorrt) and `precision` (fp32, bf16, int8, fp16) say what answers: see `describe`."""

    info: ModelInfo
    labels: LabelMap
    batch_range: tuple[int, int | None]
    backend: str
    precision: str

    def __call__(self, pixels: torch.Tensor, task: str) -> Outputs: ...


def describe(predictor: Predictor) -> str:
    """The name of what answered, e.g. "openvino-int8": logs, status files and the served model's `model` field."""
    return f"{predictor.backend}-{predictor.precision}"


def onnx_info(path: Path) -> ModelInfo:
    """The ModelInfo an exported ONNX file carries in its metadata, read without loading its weights or a runtime."""
    import onnx

    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
        raise CheckpointError(f"{path} is not an ONNX model ONNX Runtime can load "
                              f"({type(exc).__name__}: {str(exc)[:200]}); give a file written by "
                              "`oneformer export` or `oneformer quantize`") from None
    if META_KEY not in meta:
        raise CheckpointError(f"{path} has no oneformer metadata: export it with `oneformer export`")
    return ModelInfo.from_json(meta[META_KEY], str(path))


def prepare(image: np.ndarray, size: tuple[int, int], mean: list[float], std: list[float], divisor: int = 32
            ) -> Prepared:
    """Resize to the network size (h, w), normalize, pad to a multiple of `divisor`."""
    h0, w0 = image.shape[:2]
    small, _ = resize_pair(image, None, *size)
    return Prepared(pad_divisible(normalize(small, mean, std), divisor)[None], tuple(size), (h0, w0))


def keep_aspect(hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The largest size within (h, w) = `size` with the image's own aspect ratio (inference.keep_aspect_ratio)."""
    scale = min(size[0] / hw[0], size[1] / hw[1])
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def stack(preps: list[Prepared]) -> tuple[torch.Tensor, list[Prepared]]:
    """One batch of prepared images, each zero-padded bottom/right to the largest (as Detectron2 batches them), and
    per image the view of its row that post-processing maps back from."""
    h = max(p.pixels.shape[-2] for p in preps)
    w = max(p.pixels.shape[-1] for p in preps)
    pixels = torch.zeros((len(preps), 3, h, w), dtype=preps[0].pixels.dtype)
    for i, p in enumerate(preps):
        pixels[i, :, : p.pixels.shape[-2], : p.pixels.shape[-1]] = p.pixels[0]
    return pixels, [Prepared(pixels[i : i + 1], p.valid_hw, p.orig_hw) for i, p in enumerate(preps)]


def run_batch(predictor: Predictor, pixels: torch.Tensor, task: str) -> Outputs:
    """Any number of images through a predictor in the batches its model file takes: split above its largest, zero
    images added up to its smallest (their outputs dropped)."""
    low, high = predictor.batch_range
    step = high or len(pixels)
    parts = []
    for start in range(0, len(pixels), step):
        chunk = pixels[start : start + step]
        n = len(chunk)
        if n < low:
            chunk = torch.cat([chunk, chunk.new_zeros((low - n, *chunk.shape[1:]))])
        out = predictor(chunk, task)
        parts.append({k: v[:n] for k, v in vars(out).items() if v is not None})
    return Outputs(**{k: torch.cat([p[k] for p in parts]) for k in parts[0]})


def check_task(info: ModelInfo, task: str, path: Path) -> None:
    """A graph answers only the task it was exported for."""
    if info.task is not None and task != info.task:
        raise OneFormerError(f"{path} was exported for the {info.task} task, not {task}: export it again with "
                             f"export.task={task}, or run the checkpoint")
    check_answers(info, task, path)


def check_answers(info: ModelInfo, task: str, path: Path) -> None:
    """A network answers only the tasks it predicts (SegFormer semantic; Mask2Former its model.mode's)."""
    if task not in info.tasks:
        raise OneFormerError(f"{path}: this {info.arch} model predicts {', '.join(info.tasks)}, not {task}; "
                             f"ask for {info.tasks[-1]}")


def outputs_from(names: list[str], arrays: list[np.ndarray]) -> Outputs:
    """Outputs from a graph's named results (the names the export action gives them)."""
    values = {n: torch.from_numpy(np.asarray(a)) for n, a in zip(names, arrays)}
    return Outputs(class_logits=values.get("class_logits"), mask_logits=values.get("mask_logits"),
                   scores=values.get("scores"), labels=values.get("labels"))


def network_size(predictor: Predictor, default: tuple[int, int]) -> tuple[int, int]:
    """The input size a fixed-size graph demands, else the size the caller chose."""
    size = predictor.info.input_size
    return (size[0], size[1]) if size else default
