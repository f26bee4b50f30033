"""Semantic, instance and panoptic outputs from class and mask logits; one code path for every backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def to_image_size(
    mask_logits: torch.Tensor, input_hw: tuple[int, int], valid_hw: tuple[int, int], out_hw: tuple[int, int]
) -> torch.Tensor:
    """Mask logits [Q, h, w] at 1/4 scale -> [Q, H0, W0]: up to the padded input, crop padding, resize."""
    x = F.interpolate(mask_logits[None].float(), size=input_hw, mode="bilinear", align_corners=False)
    x = x[..., : valid_hw[0], : valid_hw[1]]
    if tuple(valid_hw) != tuple(out_hw):
        x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    return x[0]


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-class score maps [..., C, H, W]: softmax classes (no-object dropped) weighted by sigmoid masks."""
    probs = class_logits.float().softmax(-1)[..., :-1]
    return torch.einsum("...qc,...qhw->...chw", probs, mask_logits.float().sigmoid())


def semantic(scores: torch.Tensor, input_hw: tuple[int, int], valid_hw: tuple[int, int],
             out_hw: tuple[int, int]) -> np.ndarray:
    """Label map [H0, W0] (int32): per-class scores brought to the image size like mask logits, then argmax."""
    return to_image_size(scores, input_hw, valid_hw, out_hw).argmax(0).to(torch.int32).numpy()


@dataclass
class InstancePrediction:
    """One predicted instance."""

    mask: np.ndarray
    cls: int
    score: float


def instance(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, thing: np.ndarray, topk: int
) -> list[InstancePrediction]:
    """Top-k (query, class) pairs over thing classes; score = class prob * mean mask prob inside the mask."""
    q, c1 = class_logits.shape
    scores = class_logits.float().softmax(-1)[:, :-1]
    scores = scores * torch.as_tensor(thing, dtype=scores.dtype)[None]
    flat = scores.flatten()
    k = min(topk, int((flat > 0).sum()))
    if k == 0:
        return []
    top, idx = flat.topk(k)
    queries, classes = idx // (c1 - 1), idx % (c1 - 1)
    probs = mask_logits[queries].float().sigmoid()
    masks = probs > 0.5
    mask_score = (probs * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    out = []
    for m, c, s in zip(masks, classes.tolist(), (top * mask_score).tolist()):
        if m.any():
            out.append(InstancePrediction(m.numpy(), int(c), float(s)))
    return out


@dataclass
class PanopticPrediction:
    """A panoptic segment-id map and its segments (id, class, isthing, score)."""

    ids: np.ndarray
    segments: list[dict]


def panoptic(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    thing: np.ndarray,
    object_mask_threshold: float,
    overlap_threshold: float,
) -> PanopticPrediction:
    """Mask2Former/OneFormer panoptic inference: keep confident queries, assign pixels, merge stuff by class."""
    num_classes = class_logits.shape[-1] - 1
    scores, labels = class_logits.float().softmax(-1).max(-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    h, w = mask_logits.shape[-2:]
    ids = np.zeros((h, w), dtype=np.int32)
    segments: list[dict] = []
    if not keep.any():
        return PanopticPrediction(ids, segments)
    scores, labels, probs = scores[keep], labels[keep], mask_logits[keep].float().sigmoid()
    owner = (scores[:, None, None] * probs).argmax(0)
    stuff_ids: dict[int, int] = {}
    for k in range(len(labels)):
        cls = int(labels[k])
        full = probs[k] >= 0.5
        mine = (owner == k) & full
        area, full_area = int(mine.sum()), int(full.sum())
        if area == 0 or full_area == 0 or area / full_area < overlap_threshold:
            continue
        isthing = bool(thing[cls])
        if not isthing and cls in stuff_ids:
            ids[mine.numpy()] = stuff_ids[cls]
            continue
        seg_id = len(segments) + 1
        if not isthing:
            stuff_ids[cls] = seg_id
        ids[mine.numpy()] = seg_id
        segments.append({"id": seg_id, "category": cls, "isthing": isthing, "score": float(scores[k])})
    return PanopticPrediction(ids, segments)


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """RGB image of a label map (values beyond the palette are black)."""
    pal = np.concatenate([palette, np.zeros((1, 3), np.uint8)])
    return pal[np.clip(labels, 0, len(palette))]
