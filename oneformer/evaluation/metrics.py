"""Segmentation metrics: mIoU / pixel accuracy, panoptic quality (PQ/SQ/RQ), and COCO mask AP."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class ConfusionMatrix:
    """Accumulates a class confusion matrix the way mmseg counts it: pixels whose ground truth is void are skipped;
    a predicted value outside the classes (unlabeled, -1, 255) is a miss for the ground-truth class and a false
    positive for none (an extra column, never folded into a real class)."""

    def __init__(self, num_classes: int, ignore: int = 255) -> None:
        self.n, self.ignore = num_classes, ignore
        self.mat = np.zeros((num_classes, num_classes + 1), dtype=np.int64)  # last column: predicted unlabeled

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: predicted and ground-truth class maps of the same shape."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction of shape {pred.shape} for ground truth of shape {gt.shape}")
        keep = (gt != self.ignore) & (gt >= 0) & (gt < self.n)
        p = pred[keep].astype(np.int64)
        p = np.where((p >= 0) & (p < self.n), p, self.n)
        idx = gt[keep].astype(np.int64) * (self.n + 1) + p
        self.mat += np.bincount(idx, minlength=self.n * (self.n + 1)).reshape(self.n, self.n + 1)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both ground truth and predictions (an empty union)."""
        tp = np.diag(self.mat[:, : self.n]).astype(float)
        union = self.mat.sum(1) + self.mat[:, : self.n].sum(0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def summary(self) -> dict[str, float]:
        """mIoU over the classes with a non-empty union (mmseg), and pixel accuracy over non-void pixels."""
        iou = self.iou()
        total = self.mat.sum()
        return {
            "mIoU": float(np.nanmean(iou)) if not np.isnan(iou).all() else 0.0,
            "pixel_accuracy": float(np.diag(self.mat[:, : self.n]).sum() / total) if total else 0.0,
        }


class PanopticQuality:
    """PQ, SQ and RQ (all, things, stuff) as the COCO panoptic API defines them."""

    def __init__(self, thing: np.ndarray) -> None:
        self.thing = np.asarray(thing, bool)
        self.stats = defaultdict(lambda: np.zeros(4))  # class -> [iou_sum, tp, fp, fn]

    def update(self, pred_ids: np.ndarray, pred_segs: dict[int, int], gt_ids: np.ndarray,
               gt_segs: dict[int, int], gt_crowd: set[int] | None = None) -> None:
        """One image: id maps (0 = void) and {segment id: class}; crowd gt segments are ignored."""
        gt_crowd = gt_crowd or set()
        pairs = gt_ids.astype(np.int64) * (2**31) + pred_ids.astype(np.int64)
        uniq, counts = np.unique(pairs, return_counts=True)
        inter = {(int(u // 2**31), int(u % 2**31)): int(c) for u, c in zip(uniq, counts)}
        gt_area = {g: int(c) for g, c in zip(*np.unique(gt_ids, return_counts=True))}
        pred_area = {p: int(c) for p, c in zip(*np.unique(pred_ids, return_counts=True))}
        matched_gt, matched_pred = set(), set()
        for (g, p), area in inter.items():
            if g == 0 or p == 0 or g not in gt_segs or p not in pred_segs or g in gt_crowd:
                continue
            if gt_segs[g] != pred_segs[p]:
                continue
            union = pred_area[p] + gt_area[g] - area - inter.get((0, p), 0)
            iou = area / union
            if iou > 0.5:
                self.stats[gt_segs[g]] += (iou, 1, 0, 0)
                matched_gt.add(g)
                matched_pred.add(p)
        for g, c in gt_segs.items():
            if g not in matched_gt and g not in gt_crowd and gt_area.get(g, 0) > 0:
                self.stats[c] += (0, 0, 0, 1)
        crowd_by_class = defaultdict(set)
        for g in gt_crowd:
            crowd_by_class[gt_segs[g]].add(g)
        for p, c in pred_segs.items():
            if p in matched_pred or pred_area.get(p, 0) == 0:
                continue
            ignored = inter.get((0, p), 0) + sum(inter.get((g, p), 0) for g in crowd_by_class[c])
            if ignored / pred_area[p] > 0.5:
                continue
            self.stats[c] += (0, 0, 1, 0)

    def summary(self) -> dict[str, float]:
        """PQ/SQ/RQ averaged over classes seen (all, things 'Th', stuff 'St'), in percent-free [0, 1]."""
        out = {}
        for name, sel in (("", None), ("_th", True), ("_st", False)):
            pq, sq, rq, n = 0.0, 0.0, 0.0, 0
            for c, (iou, tp, fp, fn) in self.stats.items():
                if sel is not None and bool(self.thing[c]) != sel:
                    continue
                if tp + fp + fn == 0:
                    continue
                n += 1
                rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
                sq_c = iou / tp if tp else 0.0
                pq += sq_c * rq_c
                sq += sq_c
                rq += rq_c
            out.update({f"PQ{name}": pq / n if n else 0.0, f"SQ{name}": sq / n if n else 0.0,
                        f"RQ{name}": rq / n if n else 0.0})
        return out


def coco_mask_ap(gt: dict, results: list[dict]) -> dict[str, float]:
    """COCO mask AP with pycocotools: `gt` is a COCO instance dict, `results` COCO result entries (RLE)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not gt["annotations"]:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(max(ev.stats[0], 0)), "AP50": float(max(ev.stats[1], 0)), "AP75": float(max(ev.stats[2], 0))}
