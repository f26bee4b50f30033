"""Scoring on the evaluation split: any predictor (checkpoint, ONNX, INT8, engine) or prediction files, the same way."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from oneformer.data.readers import Record, load_target, read_image, read_split
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
          prefer: str = "test", on_start: Callable[[int], None] | None = None) -> Scorer:
    """Score a predictor (any backend) or prediction files on the evaluation split; `on_start(n_images)` runs once
    the split, the tasks and the predictions' completeness are validated, before the first image is scored."""
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
    if files is not None:
        tasks = [t for t in tasks if t in files.tasks()]
        if not tasks:
            raise DataError(f"evaluate.predictions: {files.folder} holds {', '.join(files.tasks())} predictions; "
                            f"{what} scores {', '.join(model_tasks(spec, records[0].kind))}")
        check_complete(files, records, tasks, spec.evaluate.missing_predictions)
    if on_start is not None:
        on_start(len(records))
    scorer = Scorer(labels, spec.dataset.ignore_value)
    for n, rec in enumerate(records):
        gt_ids, gt_segs = load_target(rec, labels)
        if files is not None:
            sem, pan, inst = file_predictions(files, rec, tasks, gt_ids.shape)
        else:
            sem, pan, inst = predict(model, read_image(rec.image), tasks, spec)
        scorer.add(n + 1, gt_ids, gt_segs, sem, pan, inst)
        if (n + 1) % 10 == 0 or n + 1 == len(records):
            log.info("evaluate: %d/%d images", n + 1, len(records))
    return scorer


def check_complete(files: PredictionFiles, records: list[Record], tasks: list[str], missing: str) -> None:
    """Every image of the split has a prediction of every scored task, or evaluate.missing_predictions=empty says
    to score the absent ones as empty (then every metric does)."""
    absent = {t: [r.image.name for r in records if not files.has(t, r.image.stem, r.image_id)] for t in tasks}
    absent = {t: names for t, names in absent.items() if names}
    if not absent:
        return
    text = "; ".join(f"{t}: {len(names)} of {len(records)} images ({', '.join(names[:5])}"
                     f"{', ...' if len(names) > 5 else ''})" for t, names in absent.items())
    if missing == "error":
        raise DataError(f"evaluate.predictions: {files.folder} has no prediction for {text}. Predict them, or set "
                        f"evaluate.missing_predictions=empty to score them as empty predictions")
    log.warning("evaluate: no prediction for %s; scored as empty (evaluate.missing_predictions=empty)", text)


def file_predictions(files: PredictionFiles, rec: Record, tasks: list[str], shape: tuple[int, ...]
                     ) -> tuple[np.ndarray | None, PanopticPrediction | None, list[InstancePrediction] | None]:
    """One image's predictions from files, absent ones as empty (check_complete allowed it), each of the ground
    truth's size or a clear error naming the file."""
    stem, image_id = rec.image.stem, rec.image_id
    sem = pan = inst = None
    if "semantic" in tasks:
        sem = files.semantic(stem, image_id)
        sem = np.full(shape, -1, dtype=np.int64) if sem is None else sem
        _same_size(sem.shape, shape, files.where("semantic", stem, image_id), rec)
    if "panoptic" in tasks:
        pan = files.panoptic_pred(stem, image_id) or PanopticPrediction(np.zeros(shape, np.int32), [])
        _same_size(pan.ids.shape, shape, files.where("panoptic", stem, image_id), rec)
    if "instance" in tasks:
        inst = files.instance_preds(stem, image_id) or []
        for p in inst:
            _same_size(p.mask.shape, shape, files.where("instance", stem, image_id), rec)
    return sem, pan, inst


def _same_size(got: tuple[int, ...], want: tuple[int, ...], where: str, rec: Record) -> None:
    if tuple(got) != tuple(want):
        raise DataError(f"evaluate.predictions: {where} is {got[0]}x{got[1]} (HxW), but the ground truth of "
                        f"{rec.image.name} is {want[0]}x{want[1]}: predict at the image's own size")


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
