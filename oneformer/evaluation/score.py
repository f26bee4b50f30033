"""Scoring on the evaluation split: any predictor (checkpoint, ONNX, INT8, engine) or prediction files, the same way."""

from __future__ import annotations

import logging

import numpy as np

from oneformer.data.readers import load_target, read_image, read_split
from oneformer.data.transforms import eval_size
from oneformer.errors import DataError
from oneformer.evaluation.formats import PredictionFiles
from oneformer.evaluation.scorer import Scorer
from oneformer.runtime.postprocess import InstancePrediction, PanopticPrediction, instance, panoptic
from oneformer.runtime.predictor import Predictor, network_size, prepare
from oneformer.spec import ExperimentSpec, SplitConfig

log = logging.getLogger(__name__)


def eval_split(spec: ExperimentSpec, prefer: str = "test") -> tuple[str, SplitConfig]:
    """dataset.test when it has annotations (TAO's evaluate input), else dataset.val; `prefer="val"` the other way
    round (the INT8 gate is judged on validation data)."""
    order = ("test", "val") if prefer == "test" else ("val", "test")
    for name in order:
        split = getattr(spec.dataset, name)
        if split.annotations:
            return f"dataset.{name}", split
    raise DataError("evaluate needs dataset.test (or dataset.val) images and annotations")


def model_tasks(spec: ExperimentSpec, data_kind: str) -> list[str]:
    """Tasks to score: those toggled on, and only semantic for semantic-only ground truth."""
    t = spec.model.task_toggling
    tasks = [name for name, on in (("semantic", t.semantic_on), ("panoptic", t.panoptic_on),
                                   ("instance", t.instance_on)) if on]
    return ["semantic"] if data_kind == "semantic" else tasks


def score(model: Predictor | PredictionFiles, spec: ExperimentSpec, max_images: int | None = None,
          prefer: str = "test") -> Scorer:
    """Score a predictor (any backend) or prediction files on the evaluation split."""
    what, split = eval_split(spec, prefer)
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
