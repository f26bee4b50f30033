"""The evaluate action: score a model (or prediction files) on the test split; write metrics.json and CSV."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from oneformer.checkpoint import resolve
from oneformer.data.datasets import read_labels
from oneformer.data.readers import load_target, read_image, read_split
from oneformer.data.transforms import eval_size
from oneformer.errors import DataError
from oneformer.evaluation.formats import PredictionFiles
from oneformer.evaluation.scorer import Scorer
from oneformer.postprocess import instance, panoptic, semantic, to_image_size
from oneformer.runtime import open_predictor, prepare
from oneformer.spec import ExperimentSpec
from oneformer.status import StatusWriter

log = logging.getLogger(__name__)


def eval_split(spec: ExperimentSpec) -> tuple[str, object]:
    """dataset.test when it has annotations (TAO's evaluate input), else dataset.val."""
    if spec.dataset.test.annotations:
        return "dataset.test", spec.dataset.test
    if spec.dataset.val.annotations:
        return "dataset.val", spec.dataset.val
    raise DataError("evaluate needs dataset.test (or dataset.val) images and annotations")


def model_tasks(spec: ExperimentSpec, data_kind: str) -> list[str]:
    """Tasks to score: those toggled on, and only semantic for semantic-only ground truth."""
    t = spec.model.task_toggling
    tasks = [name for name, on in (("semantic", t.semantic_on), ("panoptic", t.panoptic_on),
                                   ("instance", t.instance_on)) if on]
    return ["semantic"] if data_kind == "semantic" else tasks


def evaluate(spec: ExperimentSpec) -> dict:
    """Run the evaluation; returns the metrics dict (also written to <evaluate dir>/metrics.json)."""
    out_dir = spec.action_dir("evaluate")
    out_dir.mkdir(parents=True, exist_ok=True)
    status = StatusWriter(out_dir)
    status.write("STARTED", "Evaluation started")
    what, split = eval_split(spec)
    cfg = spec.evaluate
    predictor = files = None
    if cfg.predictions:
        labels = read_labels(spec)
        files = PredictionFiles(cfg.predictions, labels)
        source = str(cfg.predictions)
    else:
        model_path = resolve(cfg.trt_engine or cfg.checkpoint, spec.action_dir("train"), "evaluate.checkpoint")
        predictor = open_predictor(model_path)
        labels = predictor.labels
        source = str(model_path)
    records = read_split(split.annotations, split.images, split.panoptic, split.format, labels, what)
    if cfg.max_images:
        records = records[: cfg.max_images]
    tasks = model_tasks(spec, records[0].kind)
    scorer = Scorer(labels, spec.dataset.ignore_value)
    thing, test = labels.thing_mask, spec.model.test
    for n, rec in enumerate(records):
        gt_ids, gt_segs = load_target(rec, labels)
        stem = rec.image.stem
        if files is not None:
            sem, pan, inst = files.semantic(stem, spec.dataset.ignore_value), files.panoptic_pred(stem), \
                files.instance_preds(stem)
        else:
            image = read_image(rec.image)
            prep = prepare(image, eval_size(*image.shape[:2], spec.dataset.augmentation), predictor.mean,
                           predictor.std, spec.model.one_former.size_divisibility)
            outs = {}
            for task in tasks:
                cls, masks = predictor(prep.pixels, task)
                outs[task] = (cls[0], to_image_size(masks[0], tuple(prep.pixels.shape[-2:]), prep.valid_hw,
                                                    prep.orig_hw))
            sem = semantic(*outs["semantic"]) if "semantic" in outs else None
            pan = panoptic(*outs["panoptic"], thing, test.object_mask_threshold, test.overlap_threshold) \
                if "panoptic" in outs else None
            inst = instance(*outs["instance"], thing, test.test_topk_per_image) if "instance" in outs else None
        scorer.add(n + 1, gt_ids, gt_segs, sem, pan, inst)
        if (n + 1) % 10 == 0 or n + 1 == len(records):
            log.info("evaluate: %d/%d images", n + 1, len(records))
    metrics = scorer.result()
    write_results(out_dir, metrics, scorer.per_class_iou(), source, cfg.iou_per_class)
    status.write("SUCCESS", "Evaluation finished", kpi=metrics)
    return metrics


def write_results(out_dir: Path, metrics: dict, per_class: list[dict], source: str, per_class_log: bool) -> None:
    """metrics.json, per_class_iou.csv, and a readable table in the log."""
    (out_dir / "metrics.json").write_text(json.dumps({**metrics, "model": source}, indent=1))
    with open(out_dir / "per_class_iou.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["class", "name", "iou"])
        w.writeheader()
        w.writerows(per_class)
    lines = ["", f"{'metric':<16}{'value':>10}", "-" * 26]
    lines += [f"{k:<16}{v:>10.4f}" for k, v in metrics.items() if isinstance(v, float)]
    if per_class_log:
        lines += ["", f"{'class':<24}{'IoU':>10}", "-" * 34]
        lines += [f"{r['name']:<24}{(r['iou'] if r['iou'] is not None else float('nan')):>10.4f}" for r in per_class]
    log.info("evaluation of %s%s", source, "\n".join(lines))

