"""Accumulates mIoU, PQ and mask AP over images, whatever produced the predictions (model or files)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from oneformer.data.labelmap import LabelMap
from oneformer.data.readers import Segment
from oneformer.data.targets import semantic_map
from oneformer.evaluation.metrics import ConfusionMatrix, PanopticQuality, coco_mask_ap
from oneformer.runtime.postprocess import InstancePrediction, PanopticPrediction


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


class Scorer:
    """Feed it ground truth and predictions per image; `result()` gives the metrics dict."""

    def __init__(self, labels: LabelMap, ignore: int = 255) -> None:
        self.labels, self.ignore = labels, ignore
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
        if semantic is not None:
            self.confusion.update(semantic, semantic_map(gt_ids, gt_segments, self.ignore))
            self.seen["semantic"] += 1
        if panoptic is not None:
            self.pq.update(panoptic.ids, {s["id"]: s["category"] for s in panoptic.segments}, gt_ids,
                           {s.id: s.cls for s in gt_segments}, {s.id for s in gt_segments if s.iscrowd})
            self.seen["panoptic"] += 1
        if instances is not None:
            h, w = gt_ids.shape
            self.gt_coco["images"].append({"id": image_id, "height": h, "width": w})
            for s in gt_segments:
                m = gt_ids == s.id
                if not s.isthing or not m.any():
                    continue
                rle = _rle(m)
                self.gt_coco["annotations"].append({
                    "id": len(self.gt_coco["annotations"]) + 1, "image_id": image_id, "category_id": s.cls,
                    "segmentation": rle, "area": float(m.sum()), "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": int(s.iscrowd)})
            for p in instances:
                self.results.append({"image_id": image_id, "category_id": p.cls, "segmentation": _rle(p.mask),
                                     "score": p.score})
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
            out.update(coco_mask_ap(self.gt_coco, self.results))
        out["num_images"] = max(self.seen.values())
        return out
