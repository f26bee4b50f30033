"""The inference action: overlays, raw label maps and segment JSON for every image in inference.images_dir."""

from __future__ import annotations

import logging

from oneformer.actions import not_set
from oneformer.artifacts import StatusWriter, write_json
from oneformer.data.readers import list_images, read_image
from oneformer.data.staging import stage
from oneformer.errors import DataError
from oneformer.evaluation import formats
from oneformer.evaluation.score import progress
from oneformer.model.checkpoint import resolve
from oneformer.runtime import open_predictor
from oneformer.runtime.devices import inference_device
from oneformer.runtime.draw import overlay
from oneformer.runtime.predictor import describe, network_size
from oneformer.runtime.segment import Thresholds, segment_batch
from oneformer.spec import ExperimentSpec

log = logging.getLogger(__name__)


def inference(spec: ExperimentSpec) -> dict:
    """Predict every image; returns counts and the output folder."""
    cfg = spec.inference
    out_dir = spec.action_dir("inference")
    if not cfg.images_dir:
        raise DataError(not_set("inference", "inference.images_dir"))
    images = list_images(stage(cfg.images_dir, "inference.images_dir"), "inference.images_dir")
    model_path = resolve(cfg.trt_engine or cfg.checkpoint, spec.action_dir("train"), "inference.checkpoint",
                         spec.arch)
    predictor = open_predictor(model_path, spec=spec,
                               device=inference_device(model_path, cfg.num_gpus, cfg.gpu_ids, "inference"),
                               backend=cfg.backend, precision=cfg.precision, images=images[:2], section="inference")
    answers = describe(predictor)
    log.info("inference: %s runs %s (inference.backend=%s, inference.precision=%s)", answers, model_path.name,
             cfg.backend, cfg.precision)
    labels = predictor.labels
    out_dir.mkdir(parents=True, exist_ok=True)
    status = StatusWriter(out_dir)
    status.write("STARTED", f"Inference on {len(images)} images with {answers}", backend=answers)
    palette, test = labels.palette, spec.model.test
    size = network_size(predictor, (cfg.image_size[0], cfg.image_size[-1]))
    if size != (cfg.image_size[0], cfg.image_size[-1]):
        log.info("inference: %s takes %dx%d inputs (inference.image_size ignored)", model_path, *size)
    thresholds = Thresholds(test.object_mask_threshold, test.overlap_threshold, test.test_topk_per_image)
    pan_entries, inst_entries, segments = [], [], {}
    (out_dir / "overlays").mkdir(exist_ok=True)
    try:
        for start in range(0, len(images), cfg.batch_size):
            batch = images[start : start + cfg.batch_size]
            pictures = [read_image(path) for path in batch]
            results = segment_batch(predictor, pictures, cfg.mode, size, thresholds, cfg.keep_aspect_ratio)
            for path, image, result in zip(batch, pictures, results, strict=True):
                stem = path.stem
                if cfg.mode == "semantic":
                    formats.write_semantic(out_dir, stem, result.labels, labels)
                elif cfg.mode == "panoptic":
                    pan_entries.append(formats.panoptic_entry(out_dir, stem, result.panoptic, labels))
                else:  # all top-k, as COCO results are
                    inst_entries += formats.instance_entries(stem, result.instances, labels)
                segments[stem] = result.segments
                overlay(image, result, palette, cfg.opacity, cfg.draw_labels).save(out_dir / "overlays" / f"{stem}.png")
            progress(start + len(batch), len(images), len(batch), "inference")
    except Exception as exc:
        status.write("FAILURE", f"{type(exc).__name__}: {exc}")
        raise
    if cfg.mode == "panoptic":
        categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in labels.categories]
        write_json(out_dir / formats.PANOPTIC_JSON, {"annotations": pan_entries, "categories": categories}, None)
    if cfg.mode == "instance":
        write_json(out_dir / formats.INSTANCE_JSON, inst_entries, None)
    write_json(out_dir / "segments.json", segments)
    status.write("SUCCESS", f"Inference finished: {len(images)} images ({answers})", kpi={"images": len(images)},
                 backend=answers)
    return {"images": len(images), "results_dir": str(out_dir), "model": str(model_path), "mode": cfg.mode,
            "backend": answers}
