"""The inference action: overlays, raw label maps and segment JSON for every image in inference.images_dir."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from oneformer.artifacts import StatusWriter, write_json
from oneformer.data.readers import list_images, read_image
from oneformer.data.staging import stage
from oneformer.errors import DataError
from oneformer.evaluation import formats
from oneformer.model.checkpoint import resolve
from oneformer.runtime import open_predictor
from oneformer.runtime.postprocess import colorize, instance, panoptic
from oneformer.runtime.predictor import network_size, prepare
from oneformer.spec import ExperimentSpec

log = logging.getLogger(__name__)


def _instance_labels(preds: list, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Paint instances (highest score on top) into class and instance-id maps for the overlay."""
    classes = np.full(shape, -1, dtype=np.int64)
    ids = np.zeros(shape, dtype=np.int32)
    for n, p in sorted(enumerate(preds, start=1), key=lambda x: x[1].score):
        classes[p.mask], ids[p.mask] = p.cls, n
    return classes, ids


def inference(spec: ExperimentSpec) -> dict:
    """Predict every image; returns counts and the output folder."""
    cfg = spec.inference
    out_dir = spec.action_dir("inference")
    if not cfg.images_dir:
        raise DataError("inference.images_dir is not set: inference reads images from it (not dataset.test.images)")
    images = list_images(stage(cfg.images_dir, "inference.images_dir"), "inference.images_dir")
    model_path = resolve(cfg.trt_engine or cfg.checkpoint, spec.action_dir("train"), "inference.checkpoint")
    predictor = open_predictor(model_path)
    labels = predictor.labels
    out_dir.mkdir(parents=True, exist_ok=True)
    status = StatusWriter(out_dir)
    status.write("STARTED", f"Inference on {len(images)} images")
    palette, thing, test = labels.palette, labels.thing_mask, spec.model.test
    size = network_size(predictor, (cfg.image_size[0], cfg.image_size[-1]))
    if size != (cfg.image_size[0], cfg.image_size[-1]):
        log.info("inference: %s takes %dx%d inputs (inference.image_size ignored)", model_path, *size)
    pan_entries, inst_entries, segments = [], [], {}
    (out_dir / "overlays").mkdir(exist_ok=True)
    for n, path in enumerate(images, start=1):
        image = read_image(path)
        prep = prepare(image, size, predictor.info.mean, predictor.info.std, predictor.info.size_divisibility)
        out = predictor(prep.pixels, cfg.mode)
        stem = path.stem
        if cfg.mode == "semantic":
            label = out.semantic(0, prep)
            formats.write_semantic(out_dir, stem, label, labels)
            present = np.unique(label)
            segments[stem] = [{"category": labels.names[c], "area": int((label == c).sum())} for c in present]
        elif cfg.mode == "panoptic":
            pred = panoptic(*out.logits(0, prep), thing, test.object_mask_threshold, test.overlap_threshold)
            pan_entries.append(formats.panoptic_entry(out_dir, stem, pred, labels))
            label = np.full(pred.ids.shape, -1, dtype=np.int64)
            for s in pred.segments:
                label[pred.ids == s["id"]] = s["category"]
            segments[stem] = [{**s, "category": labels.names[s["category"]]} for s in pred.segments]
        else:
            preds = instance(*out.logits(0, prep), thing, test.test_topk_per_image)
            inst_entries += formats.instance_entries(stem, preds, labels)  # all top-k, as COCO results are
            preds = [p for p in preds if p.score >= test.object_mask_threshold]  # confident ones are drawn
            label, _ = _instance_labels(preds, prep.orig_hw)
            segments[stem] = [{"category": labels.names[p.cls], "score": round(p.score, 4),
                               "area": int(p.mask.sum())} for p in preds]
        color = colorize(np.where(label < 0, len(palette), label), palette)
        blend = np.where((label >= 0)[..., None], (1 - cfg.opacity) * image + cfg.opacity * color, image)
        Image.fromarray(blend.astype(np.uint8)).save(out_dir / "overlays" / f"{stem}.png")
        if n % 10 == 0 or n == len(images):
            log.info("inference: %d/%d images", n, len(images))
    if cfg.mode == "panoptic":
        categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in labels.categories]
        write_json(out_dir / formats.PANOPTIC_JSON, {"annotations": pan_entries, "categories": categories}, None)
    if cfg.mode == "instance":
        write_json(out_dir / formats.INSTANCE_JSON, inst_entries, None)
    write_json(out_dir / "segments.json", segments)
    status.write("SUCCESS", f"Inference finished: {len(images)} images", kpi={"images": len(images)})
    return {"images": len(images), "results_dir": str(out_dir), "model": str(model_path), "mode": cfg.mode}
