"""The evaluate action: score a model (or prediction files) on the test split; write metrics.json and CSV."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from oneformer.artifacts import StatusWriter, write_json, write_text
from oneformer.data.datasets import read_labels
from oneformer.evaluation.formats import PredictionFiles
from oneformer.evaluation.score import score
from oneformer.model.checkpoint import resolve
from oneformer.runtime import open_predictor
from oneformer.runtime.devices import inference_device
from oneformer.runtime.predictor import Predictor, describe, onnx_info
from oneformer.spec import ExperimentSpec

log = logging.getLogger(__name__)


def scored_precision(model_path: Path, precision: str) -> str:
    """evaluate.precision auto is an ONNX file's own precision: the metrics describe the file, never a faster bf16
    run of it (which moved mIoU by 2e-3 on the smoke model), whichever backend measured fastest that night."""
    if precision == "auto" and model_path.suffix.lower() == ".onnx":
        return onnx_info(model_path).precision
    return precision


def evaluate(spec: ExperimentSpec) -> dict:
    """Run the evaluation; returns the metrics dict (also written to <evaluate dir>/metrics.json). Everything it
    reads is validated before its results folder is made."""
    out_dir = spec.action_dir("evaluate")
    status = StatusWriter(out_dir)
    cfg = spec.evaluate

    begun: list[bool] = []  # set once validation passed and the folder exists

    def started(n_images: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        status.write("STARTED", f"Evaluation of {source} on {n_images} images")
        begun.append(True)

    backend = None  # what runs the model: none for prediction files
    if cfg.predictions:
        model: PredictionFiles | Predictor = PredictionFiles(cfg.predictions, read_labels(spec), cfg.semantic_ids,
                                                             spec.dataset.ignore_value)
        source = str(cfg.predictions)
    else:
        model_path = resolve(cfg.trt_engine or cfg.checkpoint, spec.action_dir("train"), "evaluate.checkpoint",
                             spec.arch)
        device = inference_device(model_path, cfg.num_gpus, cfg.gpu_ids, "evaluate")
        model, source = open_predictor(model_path, spec=spec, device=device, backend=cfg.backend,
                                       precision=scored_precision(model_path, cfg.precision),
                                       section="evaluate"), str(model_path)
        backend = describe(model)
        log.info("evaluate: %s runs %s (evaluate.backend=%s, evaluate.precision=%s)", backend, model_path.name,
                 cfg.backend, cfg.precision)
    try:
        scorer = score(model, spec, on_start=started)
    except Exception as exc:
        if begun:  # it failed while scoring, not in validation (an earlier run's status.json is not this one's)
            status.write("FAILURE", f"{type(exc).__name__}: {exc}")
        raise
    metrics = scorer.result()
    write_results(out_dir, metrics, scorer.per_class_iou(), source, cfg.iou_per_class, backend)
    status.write("SUCCESS", "Evaluation finished" + (f" ({backend})" if backend else ""), kpi=metrics,
                 backend=backend)
    return metrics


def write_results(out_dir: Path, metrics: dict, per_class: list[dict], source: str, per_class_log: bool,
                  backend: str | None = None) -> None:
    """metrics.json (with the model and the backend that answered), per_class_iou.csv, and a readable table in the
    log."""
    write_json(out_dir / "metrics.json", {**metrics, "model": source, **({"backend": backend} if backend else {})})
    rows = io.StringIO(newline="")
    w = csv.DictWriter(rows, fieldnames=["class", "name", "iou"])
    w.writeheader()
    w.writerows(per_class)
    write_text(out_dir / "per_class_iou.csv", rows.getvalue())
    lines = ["", f"{'metric':<16}{'value':>10}", "-" * 26]
    lines += [f"{k:<16}{v:>10.4f}" for k, v in metrics.items() if isinstance(v, float)]
    if per_class_log:
        lines += ["", f"{'class':<24}{'IoU':>10}", "-" * 34]
        lines += [f"{r['name']:<24}{(r['iou'] if r['iou'] is not None else float('nan')):>10.4f}" for r in per_class]
    log.info("evaluation of %s%s", source, "\n".join(lines))

