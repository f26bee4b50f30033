"""Accumulates mIoU, PQ and mask AP over images, whatever produced the predictions (model or files)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from oneformer.data.labelmap import LabelMap
from oneformer.data.readers import Segment
from oneformer.evaluation.metrics import ConfusionMatrix, PanopticQuality, coco_mask_ap, dense, image_pq, segment_keys
from oneformer.runtime.postprocess import InstancePrediction, PanopticPrediction


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


@dataclass
class ImageScore:
    """One image's share of every metric, computed apart (in a worker process or not) and merged in image order."""

    confusion: np.ndarray | None = None
    pq: dict[int, np.ndarray] | None = None
    size: tuple[int, int] | None = None  # set when instances were scored
    gt_anns: list[dict] = field(default_factory=list)  # COCO gt annotations, without id and image_id
    results: list[dict] = field(default_factory=list)  # COCO results, without image_id


@dataclass(frozen=True)
class ImageScorer:
    """What scoring one image needs to know of the label map (small, so it travels to worker processes)."""

    num_classes: int
    ignore: int
    thing: np.ndarray

    def __call__(self, gt_ids: np.ndarray, gt_segments: list[Segment], semantic: np.ndarray | None = None,
                 panoptic: PanopticPrediction | None = None, instances: list[InstancePrediction] | None = None,
                 instance_rles: list[tuple[int, float, dict]] | None = None) -> ImageScore:
        """One image's ground truth and any of the predictions; instances as masks or as (class, score, RLE)."""
        out = ImageScore()
        by_id = {s.id: s for s in gt_segments}
        keys = segment_keys(list(by_id))
        gi = dense(gt_ids, keys)  # once per image: semantic truth, PQ and instance masks all read it
        if semantic is not None:
            n = self.num_classes
            cls = np.array([n, *(by_id[int(k)].cls for k in keys[1:]), n], dtype=np.int64)
            cls = np.where((cls >= 0) & (cls < n) & (cls != self.ignore), cls, n)  # void, unknown ids: dropped
            if semantic.shape != gt_ids.shape:
                raise ValueError(f"prediction of shape {semantic.shape} for ground truth of shape {gt_ids.shape}")
            out.confusion = ConfusionMatrix(n, self.ignore).counts_at(semantic, (cls * (n + 1))[gi])
        if panoptic is not None:
            out.pq = image_pq(panoptic.ids, {s["id"]: s["category"] for s in panoptic.segments}, gt_ids,
                              {s.id: s.cls for s in gt_segments}, {s.id for s in gt_segments if s.iscrowd},
                              gt_dense=(keys, gi))
        if instances is not None or instance_rles is not None:
            out.size = gt_ids.shape[:2]
            where = {int(k): n for n, k in enumerate(keys)}
            fortran = np.asfortranarray(gi)  # masks compared from it come out in the order RLE encoding reads
            for s in gt_segments:
                if not s.isthing or s.id == 0:
                    continue
                m = (fortran == where[s.id]).view(np.uint8)
                area = int(m.sum())
                if not area:
                    continue
                rle = mask_utils.encode(m)
                rle["counts"] = rle["counts"].decode()
                out.gt_anns.append({"category_id": s.cls, "segmentation": rle, "area": float(area),
                                    "bbox": list(mask_utils.toBbox(rle)), "iscrowd": int(s.iscrowd)})
            for p in instances or []:
                out.results.append({"category_id": p.cls, "segmentation": _rle(p.mask), "score": p.score})
            for cls, score, rle in instance_rles or []:
                out.results.append({"category_id": cls, "segmentation": rle, "score": score})
        return out


class Scorer:
    """Feed it ground truth and predictions per image (`add`), or images scored apart (`merge`); `result()` gives
    the metrics dict. `workers` (default os.cpu_count()) is how many processes COCO mask AP may use."""

    def __init__(self, labels: LabelMap, ignore: int = 255, workers: int | None = None) -> None:
        self.labels, self.ignore = labels, ignore
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.image = ImageScorer(labels.num_classes, ignore, labels.thing_mask)
        self.confusion = ConfusionMatrix(labels.num_classes, ignore)
        self.pq = PanopticQuality(labels.thing_mask)
        self.gt_coco: dict = {"images": [], "annotations": [],
                              "categories": [{"id": i} for i in range(labels.num_classes)]}
        self.results: list[dict] = []
        self.seen = {"semantic": 0, "panoptic": 0, "instance": 0}

    def add(self, image_id: int, gt_ids: np.ndarray, gt_segments: list[Segment],
            semantic: np.ndarray | None = None, panoptic: PanopticPrediction | None = None,
            instances: list[InstancePrediction] | None = None) -> None:
        """One image's ground truth (segment-id map + segments) and any of the three predictions."""
        self.merge(image_id, self.image(gt_ids, gt_segments, semantic, panoptic, instances))

    def merge(self, image_id: int, part: ImageScore) -> None:
        """One image scored apart (`ImageScorer`); merged in image order, the totals equal one serial pass."""
        if part.confusion is not None:
            self.confusion.mat += part.confusion
            self.seen["semantic"] += 1
        if part.pq is not None:
            self.pq.merge(part.pq)
            self.seen["panoptic"] += 1
        if part.size is not None:
            h, w = part.size
            self.gt_coco["images"].append({"id": image_id, "height": h, "width": w})
            for a in part.gt_anns:
                self.gt_coco["annotations"].append({"id": len(self.gt_coco["annotations"]) + 1,
                                                    "image_id": image_id, **a})
            self.results.extend({"image_id": image_id, **r} for r in part.results)
            self.seen["instance"] += 1

    def per_class_iou(self) -> list[dict]:
        """Rows of class index, name and IoU (None where the class never appeared)."""
        iou = self.confusion.iou()
        return [{"class": i, "name": n, "iou": None if np.isnan(iou[i]) else float(iou[i])}
                for i, n in enumerate(self.labels.names)]

    def result(self) -> dict[str, float]:
        """Every metric that had predictions: mIoU, pixel_accuracy, PQ/SQ/RQ (+_th/_st), AP/AP50/AP75."""
        out: dict[str, float] = {}
        if self.seen["semantic"]:
            out.update(self.confusion.summary())
        if self.seen["panoptic"]:
            out.update(self.pq.summary())
        if self.seen["instance"]:
            out.update(coco_mask_ap(self.gt_coco, self.results, self.workers))
        out["num_images"] = max(self.seen.values())
        return out
