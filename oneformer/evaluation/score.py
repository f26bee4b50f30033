"""Scoring on the evaluation split: any predictor (checkpoint, ONNX, INT8, engine) or prediction files, the same way."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from torch.utils.data import DataLoader, Dataset

from oneformer.data.labelmap import LabelMap
from oneformer.data.loaders import worker_init
from oneformer.data.readers import Record, load_target, read_image, read_split
from oneformer.data.transforms import eval_size
from oneformer.errors import DataError
from oneformer.evaluation.formats import PredictionFiles, panoptic_ids
from oneformer.evaluation.metrics import pool_context
from oneformer.evaluation.scorer import ImageScore, ImageScorer, Scorer
from oneformer.runtime.postprocess import InstancePrediction, PanopticPrediction, instance, panoptic
from oneformer.runtime.predictor import ModelInfo, Predictor, Prepared, prepare, run_batch, stack
from oneformer.spec import AugmentationConfig, ExperimentSpec, SplitConfig

log = logging.getLogger(__name__)


def eval_split(spec: ExperimentSpec, prefer: str = "test") -> tuple[str, SplitConfig]:
    """dataset.test when it has annotations (TAO's evaluate input), else dataset.val; `prefer="val"` the other way
    round (the INT8 gate is judged on validation data)."""
    order = ("test", "val") if prefer == "test" else ("val", "test")
    for name in order:
        split = getattr(spec.dataset, name)
        if split.annotations:
            return f"dataset.{name}", split
    if spec.arch == "segformer":
        raise DataError("evaluate needs dataset.segment.root_dir (SegFormer scores root_dir/images/val with "
                        "root_dir/masks/val)")
    raise DataError("evaluate needs dataset.test (or dataset.val) images and annotations")


def model_tasks(spec: ExperimentSpec, data_kind: str) -> list[str]:
    """Tasks to score: those toggled on, and only semantic for semantic-only ground truth."""
    t = spec.model.task_toggling
    tasks = [name for name, on in (("semantic", t.semantic_on), ("panoptic", t.panoptic_on),
                                   ("instance", t.instance_on)) if on]
    return ["semantic"] if data_kind == "semantic" else tasks


def score(model: Predictor | PredictionFiles, spec: ExperimentSpec, max_images: int | None = None,
          prefer: str = "test", on_start: Callable[[int], None] | None = None, workers: int | None = None) -> Scorer:
    """Score a predictor (any backend) or prediction files on the evaluation split; `on_start(n_images)` runs once
    the split, the tasks and the predictions' completeness are validated, before the first image is scored. A
    predictor sees evaluate.batch_size images a forward pass (empty: the split's batch_size), decoded by the
    split's num_workers loader processes. Prediction files are scored by `workers` processes (default
    os.cpu_count(); see score_files), which mask AP also uses."""
    what, split = eval_split(spec, prefer)
    labels = model.labels
    records = read_split(split.annotations, split.images, split.panoptic, split.format, labels, what,
                         ignore_value=spec.dataset.ignore_value, binary_255=spec.binary_masks)
    limit = max_images or spec.evaluate.max_images
    records = records[:limit] if limit else records
    files = model if isinstance(model, PredictionFiles) else None
    tasks = [t for t in model_tasks(spec, records[0].kind) if files is not None or t in model.info.tasks]
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
    if files is not None:
        return score_files(files, records, tasks, spec.dataset.ignore_value, workers)
    scorer = Scorer(labels, spec.dataset.ignore_value, workers)
    batch = spec.evaluate.batch_size or split.batch_size
    images = EvalImages(records, labels, model.info, spec.dataset.augmentation, split.target_size)
    workers = min(split.num_workers, len(records))
    loader = DataLoader(images, batch_size=batch, num_workers=workers, collate_fn=list, worker_init_fn=worker_init)
    done = 0
    for items in loader:
        predictions = predict_batch(model, [prep for _, _, _, prep in items], tasks, spec)
        for (n, gt_ids, gt_segs, _), (sem, pan, inst) in zip(items, predictions, strict=True):
            scorer.add(n + 1, gt_ids, gt_segs, sem, pan, inst)
        done += len(items)
        progress(done, len(records), len(items))
    return scorer


MIN_PARALLEL_IMAGES = 32  # fewer images are scored in this process: starting workers would cost more


def score_files(files: PredictionFiles, records: list[Record], tasks: list[str], ignore: int = 255,
                workers: int | None = None, chunk: int = 16) -> Scorer:
    """Score prediction files on `records` (image n gets id n + 1). With many images and workers > 1 (default
    os.cpu_count()), images are read and scored in worker processes over chunks of `chunk` images; their per-image
    shares come back and are merged here in image order, so the result is exactly the serial one."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    scorer = Scorer(files.labels, ignore, workers)
    job = _FileJob(files, tasks, scorer.image)
    if workers <= 1 or len(records) < MIN_PARALLEL_IMAGES:
        for n, rec in enumerate(records):
            scorer.merge(n + 1, job(rec))
            progress(n + 1, len(records))
        return scorer
    chunks = [records[i:i + chunk] for i in range(0, len(records), chunk)]
    done = 0
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=pool_context(), initializer=_set_job,
                             initargs=(job,)) as pool:
        for part in pool.map(_run_job, chunks):
            for one in part:
                done += 1
                scorer.merge(done, one)
            progress(done, len(records), len(part))
    return scorer


class _FileJob:
    """Reads one image's ground truth and prediction files and scores them (in this process or a worker)."""

    def __init__(self, files: PredictionFiles, tasks: list[str], image: ImageScorer) -> None:
        self.files, self.tasks, self.image = files, tasks, image

    def __call__(self, rec: Record) -> ImageScore:
        if rec.kind == "coco_panoptic" and rec.panoptic_png is not None:
            gt_ids, gt_segs = panoptic_ids(rec.panoptic_png), rec.segments  # load_target's, read in one pass
        else:
            gt_ids, gt_segs = load_target(rec, self.files.labels)
        sem, pan, _ = file_predictions(self.files, rec, [t for t in self.tasks if t != "instance"], gt_ids.shape)
        rles = None
        if "instance" in self.tasks:
            rles = self.files.instance_rles(rec.image.stem, rec.image_id) or []
            for _, _, rle in rles:
                _same_size(tuple(rle["size"]), gt_ids.shape,
                           self.files.where("instance", rec.image.stem, rec.image_id), rec)
        return self.image(gt_ids, gt_segs, sem, pan, instance_rles=rles)


_JOB: _FileJob | None = None  # a worker process's job, set once by its initializer


def _set_job(job: _FileJob) -> None:
    global _JOB
    _JOB = job


def _run_job(records: list[Record]) -> list[ImageScore]:
    assert _JOB is not None
    return [_JOB(rec) for rec in records]


def progress(done: int, total: int, batch: int = 1, action: str = "evaluate") -> None:
    """A log line about every 10 images (every batch, when larger) and at the end."""
    if done % max(10, batch) < batch or done == total:
        log.info("%s: %d/%d images", action, done, total)


class EvalImages(Dataset):
    """The split's images decoded, resized and normalized, and their ground truth, in loader worker processes (the
    predictor stays in the main one)."""

    def __init__(self, records: list[Record], labels: LabelMap, info: ModelInfo, aug: AugmentationConfig,
                 target_size: list[int] | None = None) -> None:
        self.records, self.labels, self.info, self.aug, self.target = records, labels, info, aug, target_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, n: int) -> tuple[int, np.ndarray, list, Prepared]:
        rec = self.records[n]
        gt_ids, gt_segs = load_target(rec, self.labels)
        image = read_image(rec.image)
        size = self.info.input_size or self.target or eval_size(*image.shape[:2], self.aug)
        prep = prepare(image, (size[0], size[1]), self.info.mean, self.info.std, self.info.size_divisibility)
        return n, gt_ids, gt_segs, prep


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


def predict_batch(predictor: Predictor, preps: list[Prepared], tasks: list[str], spec: ExperimentSpec
                  ) -> list[tuple[np.ndarray | None, PanopticPrediction | None, list[InstancePrediction] | None]]:
    """A batch of prepared images through the predictor for each task, post-processed the same way for every
    backend."""
    test, thing = spec.model.test, predictor.labels.thing_mask
    pixels, preps = stack(preps)
    outs = {task: run_batch(predictor, pixels, task) for task in tasks}
    results = []
    for i, prep in enumerate(preps):
        sem = outs["semantic"].semantic(i, prep) if "semantic" in outs else None
        pan = panoptic(*outs["panoptic"].logits(i, prep), thing, test.object_mask_threshold,
                       test.overlap_threshold) if "panoptic" in outs else None
        inst = instance(*outs["instance"].logits(i, prep), thing, test.test_topk_per_image) \
            if "instance" in outs else None
        results.append((sem, pan, inst))
    return results
