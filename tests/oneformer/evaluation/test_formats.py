"""The metric contract on prediction files other tools write: semantic PNGs in declared ids, COCO results by
image_id, panopticapi JSON + PNGs, missing and mis-sized predictions; mIoU as mmseg counts it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from oneformer.actions.evaluate import evaluate
from oneformer.data.datasets import read_labels
from oneformer.data.readers import id_to_rgb, load_target, read_split
from oneformer.data.targets import semantic_map
from oneformer.errors import DataError
from oneformer.evaluation.formats import raw_ids
from oneformer.evaluation.metrics import ConfusionMatrix
from oneformer.evaluation.score import eval_split
from oneformer.spec import load_spec


def independent_iou(pred: np.ndarray, gt: np.ndarray, n: int, ignore: int = 255) -> np.ndarray:
    """mmseg's rule written out per class: void ground truth ignored; TP, FP, FN counted directly."""
    valid = gt != ignore
    out = np.full(n, np.nan)
    for c in range(n):
        tp = np.sum((pred == c) & (gt == c) & valid)
        fp = np.sum((pred == c) & (gt != c) & valid)
        fn = np.sum((pred != c) & (gt == c) & valid)
        if tp + fp + fn:
            out[c] = tp / (tp + fp + fn)
    return out


def test_miou_counts_unlabeled_predictions_as_misses_of_no_class() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, (2, 30, 40))
    gt[:, :3] = 255  # void ground truth: never counted
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 5, gt.shape))  # class 4 is only predicted
    pred[rng.random(gt.shape) < 0.1] = -1  # left unlabeled by the prediction
    pred[rng.random(gt.shape) < 0.05] = 255
    cm = ConfusionMatrix(5)
    for p, g in zip(pred, gt):
        cm.update(p, g)
    expected = independent_iou(pred, gt, 5)
    np.testing.assert_allclose(cm.iou(), expected, rtol=1e-12)
    assert cm.summary()["mIoU"] == pytest.approx(np.nanmean(expected), rel=1e-12)  # classes with a union
    assert expected[4] == 0.0  # predicted, never true: counted, as mmseg does
    # four classes: unlabeled pixels are not folded into the last one (that cost it IoU before)
    four = np.where(pred > 3, -1, pred)
    cm4 = ConfusionMatrix(4)
    for p, g in zip(four, gt):
        cm4.update(p, g)
    np.testing.assert_allclose(cm4.iou(), independent_iou(four, gt, 4), rtol=1e-12)
    folded = independent_iou(np.where(four < 0, 3, four), gt, 4)
    assert cm4.iou()[3] > folded[3] + 0.05 and cm4.iou()[:3] == pytest.approx(folded[:3])
    with pytest.raises(ValueError, match="shape"):
        cm.update(pred[0][:10], gt[0])


@pytest.fixture
def truth(small_synth: Path) -> dict:
    """The tiny dataset's evaluation split: records with their segment maps, class maps and the label map."""
    spec = load_spec(small_synth)
    what, split = eval_split(spec)
    labels = read_labels(spec)
    records = read_split(split.annotations, split.images, split.panoptic, split.format, labels, what)
    rows = []
    for rec in records:
        ids, segs = load_target(rec, labels)
        rows.append((rec, ids, segs, semantic_map(ids, segs, 255)))
    return {"spec": small_synth, "labels": labels, "rows": rows}


def score(truth: dict, folder: Path, tmp_path: Path, *keys: str) -> dict:
    """The evaluate action on a prediction folder."""
    spec = load_spec(truth["spec"], [f"results_dir={tmp_path / 'results'}", f"evaluate.predictions={folder}", *keys])
    return evaluate(spec)


def write_semantic(truth: dict, folder: Path, kind: str) -> Path:
    """Perfect semantic predictions as PNGs of contiguous indices (255 void) or raw category ids (0 void)."""
    (folder / "semantic").mkdir(parents=True)
    raw = raw_ids(truth["labels"])
    for rec, _, _, sem in truth["rows"]:
        values = np.where(sem == 255, 255 if kind == "contiguous" else 0, sem if kind == "contiguous" else
                          raw[np.clip(sem, 0, len(raw) - 1)])
        Image.fromarray(values.astype(np.uint8)).save(folder / "semantic" / f"{rec.image.stem}.png")
    return folder


def test_semantic_pngs_in_either_declared_id_kind(truth: dict, tmp_path: Path) -> None:
    contiguous = write_semantic(truth, tmp_path / "contiguous", "contiguous")
    raw = write_semantic(truth, tmp_path / "raw", "raw")
    assert score(truth, contiguous, tmp_path, "evaluate.semantic_ids=contiguous")["mIoU"] == pytest.approx(1.0)
    assert score(truth, raw, tmp_path, "evaluate.semantic_ids=raw")["mIoU"] == pytest.approx(1.0)
    # contiguous 0..5 also read as raw ids 1..6 (0 unlabeled), to other classes: never a guess
    with pytest.raises(DataError, match="set evaluate.semantic_ids=raw or evaluate.semantic_ids=contiguous"):
        score(truth, contiguous, tmp_path)
    (raw / "semantic" / "ids.json").write_text(json.dumps({"semantic_ids": "raw"}))  # as `oneformer inference` does
    assert score(truth, raw, tmp_path)["mIoU"] == pytest.approx(1.0)
    stem = truth["rows"][0][0].image.stem
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(contiguous / "semantic" / f"{stem}.png")
    with pytest.raises(DataError, match=rf"{stem}.png holds values \[200\].*evaluate.semantic_ids"):
        score(truth, contiguous, tmp_path, "evaluate.semantic_ids=contiguous")


def test_missing_predictions_are_an_error_or_empty_for_every_metric(truth: dict, tmp_path: Path) -> None:
    folder = write_semantic(truth, tmp_path / "preds", "raw")
    first, others = truth["rows"][0][0], truth["rows"][1:]
    write_instances({**truth, "rows": others}, folder, by="image_id")  # the first image: no instance results
    (folder / "semantic" / f"{first.image.stem}.png").unlink()  # ... and no semantic PNG
    with pytest.raises(DataError, match=rf"semantic: 1 of 4 images \({first.image.name}\); instance: 1 of 4 images"
                                        r".*missing_predictions=empty"):
        score(truth, folder, tmp_path, "evaluate.semantic_ids=raw")
    scored = score(truth, folder, tmp_path, "evaluate.semantic_ids=raw", "evaluate.missing_predictions=empty")
    # every metric scores it as an empty prediction: the same as a PNG with every pixel unlabeled, no instances
    explicit = tmp_path / "explicit"
    shutil.copytree(folder, explicit)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(explicit / "semantic" / f"{first.image.stem}.png")
    expected = score(truth, explicit, tmp_path, "evaluate.semantic_ids=raw", "evaluate.missing_predictions=empty")
    assert scored["num_images"] == expected["num_images"] == 4
    for key in ("mIoU", "pixel_accuracy", "AP"):
        assert scored[key] == pytest.approx(expected[key], abs=1e-9)
    assert scored["mIoU"] < 1.0 and scored["AP"] < 1.0  # the empty image's ground truth counted as missed


def test_a_prediction_of_another_size_names_its_file(truth: dict, tmp_path: Path) -> None:
    folder = write_semantic(truth, tmp_path / "preds", "raw")
    stem = truth["rows"][1][0].image.stem
    Image.fromarray(np.ones((32, 48), np.uint8)).save(folder / "semantic" / f"{stem}.png")
    with pytest.raises(DataError, match=rf"semantic/{stem}.png is 32x48 \(HxW\), but the ground truth of .* is "
                                        r"64x64"):
        score(truth, folder, tmp_path, "evaluate.semantic_ids=raw")


def write_instances(truth: dict, folder: Path, by: str) -> list[dict]:
    """Perfect COCO instance results (RLE, raw category ids), keyed by image_id (COCO tools) or image_name (ours)."""
    raw = raw_ids(truth["labels"])
    out = []
    for rec, ids, segs, _ in truth["rows"]:
        for s in segs:
            if s.isthing and (ids == s.id).any():
                rle = mask_utils.encode(np.asfortranarray((ids == s.id).astype(np.uint8)))
                key = {"image_id": rec.image_id} if by == "image_id" else {"image_name": rec.image.stem}
                out.append({**key, "category_id": int(raw[s.cls]), "score": 0.9,
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(out))
    return out


def test_coco_results_by_image_id_score_like_pycocotools(truth: dict, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    by_id = write_instances(truth, tmp_path / "by_id", by="image_id")
    write_instances(truth, tmp_path / "by_name", by="image_name")
    ours = score(truth, tmp_path / "by_id", tmp_path)
    assert ours["AP"] == pytest.approx(score(truth, tmp_path / "by_name", tmp_path)["AP"])
    # pycocotools on the same ground truth and results directly (crowd-free synthetic data)
    gt = {"images": [], "annotations": [], "categories": [{"id": int(c)} for c in raw_ids(truth["labels"])]}
    raw = raw_ids(truth["labels"])
    for rec, ids, segs, _ in truth["rows"]:
        gt["images"].append({"id": rec.image_id, "height": 64, "width": 64})
        for s in segs:
            if s.isthing and (ids == s.id).any():
                rle = mask_utils.encode(np.asfortranarray((ids == s.id).astype(np.uint8)))
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": rec.image_id,
                                          "category_id": int(raw[s.cls]), "segmentation": rle, "iscrowd": 0,
                                          "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle))})
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(by_id), iouType="segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ours["AP"] == pytest.approx(ev.stats[0], abs=1e-9) and ours["AP"] > 0.9
    (tmp_path / "by_id" / "instances.json").write_text(json.dumps([{"category_id": 4, "score": 1.0}]))
    with pytest.raises(DataError, match="entry 0 has neither 'image_id' nor 'image_name'"):
        score(truth, tmp_path / "by_id", tmp_path)


def test_panopticapi_json_and_pngs_score_as_the_ground_truth(truth: dict, tmp_path: Path) -> None:
    folder = tmp_path / "panopticapi"
    (folder / "panoptic").mkdir(parents=True)
    raw = raw_ids(truth["labels"])
    annotations = []
    for rec, ids, segs, _ in truth["rows"]:
        Image.fromarray(id_to_rgb(ids)).save(folder / "panoptic" / f"{rec.image.stem}.png")
        annotations.append({"image_id": rec.image_id, "file_name": f"{rec.image.stem}.png",
                            "segments_info": [{"id": s.id, "category_id": int(raw[s.cls])} for s in segs]})
    (folder / "panoptic.json").write_text(json.dumps({"annotations": annotations}))
    result = score(truth, folder, tmp_path)
    assert result["PQ"] == pytest.approx(1.0) and result["num_images"] == 4
