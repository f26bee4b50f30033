"""Task-conditioned targets as OneFormer trains: sample a task per image, build its masks, classes and text."""

from __future__ import annotations

import numpy as np
import torch

from oneformer.data.readers import Segment

TASKS = ("semantic", "instance", "panoptic")


def sample_task(probs: tuple[float, float, float], rng: np.random.Generator) -> str:
    """Pick semantic / instance / panoptic with the configured probabilities."""
    p = np.asarray(probs, dtype=float)
    return TASKS[int(rng.choice(3, p=p / p.sum()))]


def semantic_map(ids: np.ndarray, segments: list[Segment], ignore: int = 255) -> np.ndarray:
    """Per-pixel class index (ignore for void), from a segment-id map."""
    if not segments:
        return np.full(ids.shape, ignore, dtype=np.int64)
    lut_ids = np.array([s.id for s in segments])
    lut_cls = np.array([s.cls for s in segments])
    order = np.argsort(lut_ids)
    lut_ids, lut_cls = lut_ids[order], lut_cls[order]
    pos = np.clip(np.searchsorted(lut_ids, ids), 0, len(lut_ids) - 1)
    return np.where(lut_ids[pos] == ids, lut_cls[pos], ignore).astype(np.int64)


def build_targets(
    ids: np.ndarray, segments: list[Segment], task: str
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(task actually used, masks [N, H, W] float, classes [N]) for one image.

    semantic: one mask per class (things and stuff merged); instance: one per non-crowd thing;
    panoptic: one per non-crowd thing plus one per stuff class. An instance sample without things
    falls back to semantic, since it would have no target at all.
    """
    present = set(np.unique(ids).tolist())
    segs = [s for s in segments if s.id in present]
    if task == "instance" and not any(s.isthing and not s.iscrowd for s in segs):
        task = "semantic"
    groups: dict[tuple, list[int]] = {}
    for s in segs:
        if task == "semantic" or (task == "panoptic" and not s.isthing):
            groups.setdefault(("class", s.cls), []).append(s.id)
        elif s.isthing and not s.iscrowd:
            groups[("seg", s.id)] = [s.id]
    if not groups:
        h, w = ids.shape
        return task, torch.zeros(0, h, w), torch.zeros(0, dtype=torch.long)
    classes = []
    masks = np.empty((len(groups), *ids.shape), dtype=bool)
    cls_of = {s.id: s.cls for s in segs}
    for n, (key, members) in enumerate(groups.items()):
        masks[n] = np.isin(ids, members) if len(members) > 1 else ids == members[0]
        classes.append(key[1] if key[0] == "class" else cls_of[key[1]])
    return task, torch.from_numpy(masks).float(), torch.tensor(classes, dtype=torch.long)
