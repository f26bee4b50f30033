"""Segmentation metrics: mIoU / pixel accuracy, panoptic quality (PQ/SQ/RQ), and COCO mask AP."""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

import numpy as np

AREA_RANGES = 4  # COCOeval's all / small / medium / large


class ConfusionMatrix:
    """Accumulates a class confusion matrix the way mmseg counts it: pixels whose ground truth is void are skipped;
    a predicted value outside the classes (unlabeled, -1, 255) is a miss for the ground-truth class and a false
    positive for none (an extra column, never folded into a real class)."""

    def __init__(self, num_classes: int, ignore: int = 255) -> None:
        self.n, self.ignore = num_classes, ignore
        self.mat = np.zeros((num_classes, num_classes + 1), dtype=np.int64)  # last column: predicted unlabeled

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: predicted and ground-truth class maps of the same shape."""
        self.mat += self.counts(pred, gt)

    def counts(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """One image's confusion counts (what `update` adds), so image chunks can be counted apart and summed."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction of shape {pred.shape} for ground truth of shape {gt.shape}")
        n = self.n
        g = np.where((gt >= 0) & (gt < n) & (gt != self.ignore), gt, n)  # row n: void, dropped below
        return self.counts_at(pred, g.astype(np.int64) * (n + 1))

    def counts_at(self, pred: np.ndarray, row_start: np.ndarray) -> np.ndarray:
        """`counts` with the ground truth given as each pixel's row start, class * (n + 1), void pixels at n * (n + 1)
        (a lookup from segment index to row start makes it one gather)."""
        n = self.n
        size = 1 << (8 * pred.dtype.itemsize)
        if pred.dtype.kind in "iu" and size <= 1 << 16 and n <= size // 2:  # a class map from a PNG: one gather
            table = np.full(size, n, dtype=np.int32)  # negative values index its top half, as numpy wraps them
            table[:n] = np.arange(n)
            p = table[pred]
        else:
            p = np.where((pred >= 0) & (pred < n), pred, n)
        return np.bincount((row_start + p).ravel(), minlength=(n + 1) * (n + 1)).reshape(n + 1, n + 1)[:n].copy()

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
        self.merge(image_pq(pred_ids, pred_segs, gt_ids, gt_segs, gt_crowd))

    def merge(self, stats: dict[int, np.ndarray]) -> None:
        """Add one image's per-class [iou_sum, tp, fp, fn] (from `image_pq`), in class order, so any split of the
        images into chunks sums in the same order as one serial pass."""
        for c in sorted(stats):
            self.stats[c] += stats[c]

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


def _dense(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each pixel's position in the sorted `keys` (segment ids, 0 first), len(keys) for ids not among them: a lookup
    table for small ids, else a small table on some bits of the id where they tell the keys apart (checked against
    the key itself, so any other id is a miss), else a binary search."""
    miss = len(keys)
    top = int(keys[-1]) if len(keys) else 0
    if top < max(1 << 16, ids.size // 2):  # ids below 0 or above the largest key clip onto a miss
        table = np.full(top + 3, miss, dtype=np.int32)
        table[keys] = np.arange(len(keys))
        return table[np.clip(ids, -1, top + 1)]
    for bits in range(max(int(miss).bit_length() + 3, 8), 17):
        for shift in range(0, 25 - bits, 4):
            slots = (keys >> shift) & ((1 << bits) - 1)
            if len(np.unique(slots)) == miss:
                table = np.full(1 << bits, miss, dtype=np.int32)
                table[slots] = np.arange(miss)
                pos = table[(ids >> shift) & ((1 << bits) - 1)]
                known = np.append(keys, -1).astype(ids.dtype)
                return np.where(known[pos] == ids, pos, miss).astype(np.int32, copy=False)
    pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    return np.where(keys[pos] == ids, pos, miss).astype(np.int32, copy=False)


def segment_keys(segs: dict[int, int] | list[int]) -> np.ndarray:
    """The sorted segment ids of an image, 0 (void) first: what `dense` indexes pixels by."""
    return np.array([0, *sorted(int(g) for g in segs if g != 0)], dtype=np.int64)


def dense(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each pixel's position in `keys` (from segment_keys), len(keys) for ids not among them."""
    return _dense(ids, keys)


def image_pq(pred_ids: np.ndarray, pred_segs: dict[int, int], gt_ids: np.ndarray, gt_segs: dict[int, int],
             gt_crowd: set[int] | None = None, gt_dense: tuple[np.ndarray, np.ndarray] | None = None
             ) -> dict[int, np.ndarray]:
    """One image's per-class [iou_sum, tp, fp, fn] as panopticapi counts them: same-class pairs with IoU > 0.5 match
    (void pixels of the prediction left out of the union), unmatched non-crowd gt are FN, unmatched predictions FP
    unless more than half of them is void or a same-class crowd region. Ids absent from the segment lists count in
    areas but never match. One pass of pixel counting (a pair histogram of dense segment indices); `gt_dense` is
    (segment_keys(gt_segs), dense(gt_ids, keys)) when the caller has it already."""
    gt_crowd = gt_crowd or set()
    gk, gi = gt_dense if gt_dense is not None else (segment_keys(gt_segs), None)
    gi = _dense(gt_ids, gk) if gi is None else gi
    pk = segment_keys(pred_segs)
    ng, npr = len(gk) + 1, len(pk) + 1  # + one bucket for ids outside the lists
    pi = _dense(pred_ids, pk)
    pair_type = np.int32 if ng * npr < 2**31 else np.int64  # int32 pixels halve the pass's memory traffic
    inter = np.bincount((gi.astype(pair_type, copy=False) * pair_type(npr) + pi).ravel(),
                        minlength=ng * npr).reshape(ng, npr)
    gt_area, pred_area = inter.sum(1), inter.sum(0)
    g_cls = np.array([-1, *(gt_segs[int(g)] for g in gk[1:]), -1])
    p_cls = np.array([-2, *(pred_segs[int(p)] for p in pk[1:]), -2])
    g_crowd = np.array([False, *(int(g) in gt_crowd for g in gk[1:]), False])
    stats: dict[int, np.ndarray] = {}

    def add(c: int, row: tuple) -> None:
        stats.setdefault(c, np.zeros(4))
        stats[c] += row

    with np.errstate(invalid="ignore", divide="ignore"):
        union = pred_area[None, :] + gt_area[:, None] - inter - inter[0][None, :]
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    ok = (g_cls[:, None] == p_cls[None, :]) & ~g_crowd[:, None] & (inter > 0) & (iou > 0.5)
    matched_gt, matched_pred = np.zeros(ng, bool), np.zeros(npr, bool)
    for g, p in zip(*np.nonzero(ok)):  # row-major: gt id, then prediction id order
        add(int(g_cls[g]), (float(iou[g, p]), 1, 0, 0))
        matched_gt[g] = matched_pred[p] = True
    for g in range(1, ng - 1):
        if not matched_gt[g] and not g_crowd[g] and gt_area[g] > 0:
            add(int(g_cls[g]), (0, 0, 0, 1))
    for p in range(1, npr - 1):
        if matched_pred[p] or pred_area[p] == 0:
            continue
        crowd = g_crowd & (g_cls == p_cls[p])
        ignored = inter[0, p] + inter[crowd, p].sum()
        if ignored / pred_area[p] > 0.5:
            continue
        add(int(p_cls[p]), (0, 0, 1, 0))
    return stats


def coco_mask_ap(gt: dict, results: list[dict], workers: int | None = None, min_images: int = 64
                 ) -> dict[str, float]:
    """COCO mask AP with pycocotools: `gt` is a COCO instance dict, `results` COCO result entries (RLE). With many
    images (>= min_images) and workers > 1 (default os.cpu_count()), COCOeval's per-image evaluation runs in
    processes over contiguous image chunks and one accumulate in this process reads the chunks' results in image
    order: exactly what one COCOeval gives."""
    from pycocotools.cocoeval import COCOeval

    if not gt["annotations"] or not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    img_ids = sorted({im["id"] for im in gt["images"]})
    workers = min(os.cpu_count() or 1, 61) if workers is None else workers
    with contextlib.redirect_stdout(io.StringIO()):
        if workers > 1 and len(img_ids) >= min_images:
            chunks = [list(c) for c in np.array_split(np.array(img_ids, dtype=object), workers * 2) if len(c)]
            ev = COCOeval(iouType="segm")
            ev.params.imgIds = img_ids
            ev.params.catIds = sorted({c["id"] for c in gt["categories"]})
            ev.params.maxDets = sorted(ev.params.maxDets)
            ev._paramsEval = copy.deepcopy(ev.params)
            with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=pool_context()) as pool:
                parts = list(pool.map(_evaluate_images, [_subset(gt, results, c) for c in chunks]))
            per = [len(c) for c in chunks]
            ev.evalImgs = [e for k in range(len(ev.params.catIds)) for a in range(AREA_RANGES)
                           for part, n in zip(parts, per) for e in part[(k * AREA_RANGES + a) * n:
                                                                         (k * AREA_RANGES + a + 1) * n]]
        else:
            ev = _coco_eval(gt, results)
            ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(max(ev.stats[0], 0)), "AP50": float(max(ev.stats[1], 0)), "AP75": float(max(ev.stats[2], 0))}


def pool_context() -> object:
    """The start method of scoring's worker processes: fork where the OS has it (workers start in milliseconds and
    inherit what they read), else the platform's default."""
    import multiprocessing

    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


def _coco_eval(gt: dict, results: list[dict]) -> object:
    """A COCOeval (segm) of a COCO instance dict and its results."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    results = [dict(r) for r in results]  # loadRes adds fields (a numpy bbox) to its entries: leave the caller's be
    return COCOeval(coco_gt, coco_gt.loadRes(results) if results else COCO(), iouType="segm")


def _subset(gt: dict, results: list[dict], img_ids: list) -> tuple[dict, list[dict], list]:
    """The ground truth and results of some images, every category kept (so COCOeval's layout is the same)."""
    keep = set(img_ids)
    return ({"images": [im for im in gt["images"] if im["id"] in keep],
             "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
             "categories": gt["categories"]}, [r for r in results if r["image_id"] in keep], img_ids)


def _evaluate_images(args: tuple[dict, list[dict], list]) -> list:
    """COCOeval.evaluate over one chunk of images (a worker process): its evalImgs, category-major."""
    gt, results, img_ids = args
    with contextlib.redirect_stdout(io.StringIO()):
        ev = _coco_eval(gt, results)
        ev.params.imgIds = img_ids
        ev.evaluate()
    return ev.evalImgs
