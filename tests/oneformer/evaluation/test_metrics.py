"""Metrics checked against independent implementations (torchmetrics, pycocotools) on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from oneformer.data.labelmap import LabelMap
from oneformer.data.readers import Segment
from oneformer.evaluation.metrics import ConfusionMatrix, PanopticQuality, coco_mask_ap
from oneformer.evaluation.scorer import Scorer
from oneformer.runtime.postprocess import InstancePrediction


def test_miou_matches_torchmetrics() -> None:
    from torchmetrics.functional.classification import multiclass_jaccard_index

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 40, 50))
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 5, gt.shape))
    gt[0, :5] = 255
    cm = ConfusionMatrix(5)
    for p, g in zip(pred, gt):
        cm.update(p, g)
    ref = multiclass_jaccard_index(torch.as_tensor(pred), torch.as_tensor(gt), num_classes=5, ignore_index=255,
                                   average=None)
    np.testing.assert_allclose(cm.iou(), ref.numpy(), rtol=1e-6)
    assert cm.summary()["mIoU"] == pytest.approx(float(ref.mean()), rel=1e-6)


def _panoptic_pair(rng: np.random.Generator) -> tuple:
    """Random ground truth (2 stuff classes, 2 thing classes) and a perturbed prediction."""
    h, w = 32, 32
    cls = np.where(np.arange(h)[:, None] < 16, 0, 1) * np.ones((1, w), int)
    inst = np.zeros((h, w), int)
    for k, (y, x) in enumerate(rng.integers(2, 24, (3, 2)), start=1):
        c = 2 + k % 2
        cls[y : y + 6, x : x + 6], inst[y : y + 6, x : x + 6] = c, k
    pred_cls, pred_inst = cls.copy(), inst.copy()
    shift = rng.integers(-3, 4)
    pred_cls, pred_inst = np.roll(pred_cls, shift, 1), np.roll(pred_inst, shift, 1)
    pred_cls[rng.random((h, w)) < 0.05] = 1
    return (cls, inst), (pred_cls, pred_inst)


def _to_ids(cls: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """COCO-style segment ids; a stuff class (0, 1) is one segment whatever its instance id."""
    inst = np.where(cls >= 2, inst, 0)
    ids = np.zeros(cls.shape, np.int32)
    segs = {}
    for n, (c, i) in enumerate(sorted(set(zip(cls.ravel().tolist(), inst.ravel().tolist()))), start=1):
        ids[(cls == c) & (inst == i)] = n
        segs[n] = c
    return ids, segs


def test_panoptic_quality_matches_torchmetrics() -> None:
    from torchmetrics.detection import PanopticQuality as RefPQ

    rng = np.random.default_rng(1)
    ours = PanopticQuality(np.array([False, False, True, True]))
    ref = RefPQ(things={2, 3}, stuffs={0, 1}, return_sq_and_rq=True)
    for _ in range(4):
        (gc, gi), (pc, pi) = _panoptic_pair(rng)
        g_ids, g_segs = _to_ids(gc, gi)
        p_ids, p_segs = _to_ids(pc, pi)
        ours.update(p_ids, p_segs, g_ids, g_segs)
        ref.update(torch.as_tensor(np.stack([pc, pi], -1))[None], torch.as_tensor(np.stack([gc, gi], -1))[None])
    pq, sq, rq = ref.compute().tolist()
    got = ours.summary()
    assert got["PQ"] == pytest.approx(pq, abs=1e-5)
    assert got["SQ"] == pytest.approx(sq, abs=1e-5)
    assert got["RQ"] == pytest.approx(rq, abs=1e-5)


def test_mask_ap_perfect_and_missed() -> None:
    lm = LabelMap.from_list([{"id": 1, "name": "bg", "isthing": False}, {"id": 2, "name": "obj", "isthing": True}])
    ids = np.zeros((20, 20), np.int32)
    ids[2:8, 2:8], ids[10:18, 10:18] = 1, 2
    segs = [Segment(1, 1, True), Segment(2, 1, True)]
    perfect = Scorer(lm)
    perfect.add(1, ids, segs, instances=[InstancePrediction(ids == 1, 1, 0.9), InstancePrediction(ids == 2, 1, 0.8)])
    assert perfect.result()["AP"] == pytest.approx(1.0)
    half = Scorer(lm)
    half.add(1, ids, segs, instances=[InstancePrediction(ids == 1, 1, 0.9)])
    assert 0.4 < half.result()["AP"] < 0.6
    assert coco_mask_ap({"images": [], "annotations": [], "categories": []}, [])["AP"] == 0.0


def test_confusion_reads_a_png_class_map_as_the_wide_one() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(-1, 7, (48, 40))
    gt[gt == 6] = 255  # void
    wide = rng.integers(-1, 9, (48, 40))  # -1 unlabeled, 6..8 outside the 6 classes: a miss either way
    for narrow in (wide.astype(np.int16), wide.astype(np.int8), np.where(wide < 0, 250, wide).astype(np.uint8)):
        cm = ConfusionMatrix(6, 255)
        assert (cm.counts(narrow, gt) == cm.counts(wide, gt)).all()
    assert ConfusionMatrix(6, 255).counts(wide, gt).sum() == ((gt >= 0) & (gt < 6)).sum()


def test_mask_ap_over_worker_processes_equals_one_cocoeval() -> None:
    rng = np.random.default_rng(5)
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    results = []
    for image in range(1, 13):
        gt["images"].append({"id": image, "height": 32, "width": 32})
        for _ in range(3):
            y, x, h, w = (int(v) for v in rng.integers(0, 16, 4))
            mask = np.zeros((32, 32), np.uint8)
            mask[y:y + h + 4, x:x + w + 4] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            cat = int(rng.integers(1, 3))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image, "category_id": cat,
                                      "segmentation": rle, "area": float(mask.sum()), "iscrowd": 0,
                                      "bbox": list(mask_utils.toBbox(rle))})
            shifted = np.roll(mask, int(rng.integers(-3, 4)), axis=1)
            pred = mask_utils.encode(np.asfortranarray(shifted))
            pred["counts"] = pred["counts"].decode()
            results.append({"image_id": image, "category_id": cat if rng.random() < 0.8 else 3 - cat,
                            "segmentation": pred, "score": float(rng.random())})
    serial = coco_mask_ap(gt, results, workers=1)
    assert 0.05 < serial["AP"] < 1.0
    assert coco_mask_ap(gt, results, workers=2, min_images=4) == serial
