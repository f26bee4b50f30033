"""The evaluate action: score a model (or prediction files) on the test split; write metrics.json and CSV."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from oneformer.checkpoint import resolve
from oneformer.data.datasets import read_labels
from oneformer.data.readers import load_target, read_image, read_split
from oneformer.data.transforms import eval_size
from oneformer.errors import DataError
from oneformer.evaluation.formats import PredictionFiles
from oneformer.evaluation.scorer import Scorer
from oneformer.postprocess import InstancePrediction, PanopticPrediction, instance, panoptic
from oneformer.runtime import Predictor, network_size, open_predictor, prepare
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
    cfg = spec.evaluate
    if cfg.predictions:
        files = PredictionFiles(cfg.predictions, read_labels(spec))
        scorer, source = score(files, spec), str(cfg.predictions)
    else:
        model_path = resolve(cfg.trt_engine or cfg.checkpoint, spec.action_dir("train"), "evaluate.checkpoint")
        scorer, source = score(open_predictor(model_path), spec), str(model_path)
    metrics = scorer.result()
    write_results(out_dir, metrics, scorer.per_class_iou(), source, cfg.iou_per_class)
    status.write("SUCCESS", "Evaluation finished", kpi=metrics)
    return metrics


def score(model: Predictor | PredictionFiles, spec: ExperimentSpec, max_images: int | None = None) -> Scorer:
    """Score a predictor (any backend) or prediction files on the evaluation split."""
    what, split = eval_split(spec)
    labels = model.labels
    records = read_split(split.annotations, split.images, split.panoptic, split.format, labels, what)
    limit = max_images or spec.evaluate.max_images
    records = records[:limit] if limit else records
    tasks = model_tasks(spec, records[0].kind)
    files = model if isinstance(model, PredictionFiles) else None
    task = None if files is not None else model.info.task
    if task is not None:
        if task not in tasks:
            raise DataError(f"{model.info.source or 'the model'} answers only the {task} task, which {what} "
                            f"cannot score (it scores {', '.join(tasks)})")
        tasks = [task]
    scorer = Scorer(labels, spec.dataset.ignore_value)
    for n, rec in enumerate(records):
        gt_ids, gt_segs = load_target(rec, labels)
        stem = rec.image.stem
        if files is not None:
            sem, pan, inst = files.semantic(stem, spec.dataset.ignore_value), files.panoptic_pred(stem), \
                files.instance_preds(stem)
        else:
            sem, pan, inst = predict(model, read_image(rec.image), tasks, spec)
        scorer.add(n + 1, gt_ids, gt_segs, sem, pan, inst)
        if (n + 1) % 10 == 0 or n + 1 == len(records):
            log.info("evaluate: %d/%d images", n + 1, len(records))
    return scorer


def predict(predictor: Predictor, image: np.ndarray, tasks: list[str], spec: ExperimentSpec
            ) -> tuple[np.ndarray | None, PanopticPrediction | None, list[InstancePrediction] | None]:
    """One image through the predictor for each task, post-processed the same way for every backend."""
    info, test, thing = predictor.info, spec.model.test, predictor.labels.thing_mask
    size = network_size(predictor, eval_size(*image.shape[:2], spec.dataset.augmentation))
    prep = prepare(image, size, info.mean, info.std, info.size_divisibility)
    sem = pan = inst = None
    if "semantic" in tasks:
        sem = predictor(prep.pixels, "semantic").semantic(0, prep)
    if "panoptic" in tasks:
        pan = panoptic(*predictor(prep.pixels, "panoptic").logits(0, prep), thing, test.object_mask_threshold,
                       test.overlap_threshold)
    if "instance" in tasks:
        inst = instance(*predictor(prep.pixels, "instance").logits(0, prep), thing, test.test_topk_per_image)
    return sem, pan, inst


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

