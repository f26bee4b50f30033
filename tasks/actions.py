"""Prefect tasks over the oneformer actions: each takes a spec, sets what the pipeline decided, and runs it."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from oneformer.errors import OneFormerError
from oneformer.spec import ExperimentSpec, with_values
from tasks.stage_cache import with_outputs


@task(name="check-data", task_run_name="check {action} data", cache_policy=NO_CACHE)
def check_data(spec: ExperimentSpec, action: str) -> None:
    """`oneformer check --action ACTION` on the staged spec, before the flow creates its results folder or MLflow
    run: bad data fails this task, with every problem named, and leaves nothing behind."""
    from oneformer.check import preflight

    preflight(spec, action, models=False)  # the parent model is resolved next, into the results folder
    get_run_logger().info("%s data: OK", action)


@task(name="evaluate", task_run_name="evaluate {checkpoint}", cache_policy=NO_CACHE)
def evaluate(spec: ExperimentSpec, checkpoint: str) -> dict:
    """mIoU (and PQ/AP where the data allows) of a checkpoint, ONNX file or engine on the test split."""
    from oneformer.actions.evaluate import evaluate as run

    metrics = run(with_values(spec, {"evaluate.checkpoint": checkpoint, "evaluate.trt_engine": None}))
    get_run_logger().info("evaluate: %s", {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    folder = spec.action_dir("evaluate")
    return with_outputs(metrics, [folder / "metrics.json", folder / "per_class_iou.csv"])


@task(name="inference", task_run_name="inference with {model}", cache_policy=NO_CACHE)
def inference(spec: ExperimentSpec, model: str) -> dict:
    """Predictions and colored overlays for inference.images_dir."""
    from oneformer.actions.inference import inference as run

    result = run(with_values(spec, {"inference.checkpoint": model, "inference.trt_engine": None}))
    return with_outputs(result, sorted((Path(result["results_dir"]) / "overlays").glob("*.png")))


@task(name="export", task_run_name="export {checkpoint} to ONNX", cache_policy=NO_CACHE)
def export(spec: ExperimentSpec, checkpoint: str, onnx_file: str) -> dict:
    """The checkpoint as ONNX with its parity report; overwrites the pipeline's own previous export."""
    from oneformer.actions.export import export as run

    report = run(with_values(spec, {"export.checkpoint": checkpoint, "export.onnx_file": onnx_file,
                                    "export.overwrite": True}))
    return with_outputs(report, [onnx_file, onnx_file + ".report.json"])


@task(name="quantize", task_run_name="quantize {model_path} to INT8", cache_policy=NO_CACHE)
def quantize(spec: ExperimentSpec, model_path: str, onnx_file: str) -> dict:
    """INT8 QDQ ONNX calibrated on the calibration set, with the INT8-vs-FP32 report."""
    from oneformer.actions.quantize import quantize as run

    report = run(with_values(spec, {"quantize.model_path": model_path, "quantize.onnx_file": onnx_file,
                                    "quantize.overwrite": True}))
    return with_outputs(report, [onnx_file, onnx_file + ".report.json"])


@task(name="gen-trt-engine", task_run_name="TensorRT {precision} engine from {onnx_file}", cache_policy=NO_CACHE)
def gen_trt_engine(spec: ExperimentSpec, onnx_file: str, precision: str) -> dict:
    """A TensorRT engine, or a skip record with the reason where TensorRT or CUDA is missing."""
    from oneformer.actions.gen_trt_engine import gen_trt_engine as run
    from oneformer.runtime.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except OneFormerError as exc:
        get_run_logger().warning("TensorRT engine skipped: %s", exc)
        return {"skipped": str(exc), "precision": precision}
    return run(with_values(spec, {"gen_trt_engine.onnx_file": onnx_file, "gen_trt_engine.overwrite": True,
                                  "gen_trt_engine.tensorrt.data_type": precision}))
