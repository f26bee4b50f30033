"""The export action: a checkpoint to ONNX for one task, checked against PyTorch on real images."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from transformers.models.oneformer import modeling_oneformer

from oneformer.checkpoint import resolve
from oneformer.errors import ConversionError, SpecError
from oneformer.parity import compare, sample_images, sha256, write_json
from oneformer.postprocess import semantic_scores
from oneformer.runtime import META_KEY, ModelInfo, OnnxPredictor, Outputs, TorchPredictor, outputs_from
from oneformer.spec import ExperimentSpec
from oneformer.status import StatusWriter

log = logging.getLogger(__name__)

OUTPUT_NAMES = {"logits": ["class_logits", "mask_logits"], "scores": ["scores"], "labels": ["labels"]}


class TaskGraph(torch.nn.Module):
    """The network with the task text fixed in a buffer: pixel_values in, the exported task's outputs out."""

    def __init__(self, net: torch.nn.Module, task_ids: torch.Tensor, output: str) -> None:
        super().__init__()
        self.net, self.output = net, output
        self.register_buffer("task_inputs", task_ids[None].clone())

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = self.task_inputs.expand(pixel_values.shape[0], -1)
        out = self.net(pixel_values=pixel_values, task_inputs=tokens)
        cls, masks = out.class_queries_logits, out.masks_queries_logits
        if self.output == "logits":
            return cls, masks
        scores = semantic_scores(cls, masks)
        if self.output == "scores":
            return (scores,)
        up = F.interpolate(scores, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        return (up.argmax(1),)

    def outputs(self, pixels: torch.Tensor) -> Outputs:
        """Eager outputs named as in the graph, for the parity check."""
        with torch.no_grad():
            values = self(pixels)
        return outputs_from(OUTPUT_NAMES[self.output], [v.numpy() for v in values])


@contextmanager
def exportable() -> Iterator[None]:
    """transformers' OneFormer made exportable while the export runs (site-packages stay untouched).

    The deformable attention's sampling locations arrive as float64 under tracing, which becomes a float64
    GridSample that ONNX Runtime cannot run; casting them to the value dtype is exact for float32 models.
    """
    original = modeling_oneformer.multi_scale_deformable_attention

    def cast(value: torch.Tensor, shapes: object, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return original(value, shapes, locations.to(value.dtype), weights)

    modeling_oneformer.multi_scale_deformable_attention = cast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
            yield
    finally:
        modeling_oneformer.multi_scale_deformable_attention = original


def output_kind(task: str, semantic_output: str) -> str:
    """semantic -> per-class scores (or the label map); instance/panoptic -> class and mask logits."""
    return semantic_output if task == "semantic" else "logits"


def check_size(spec: ExperimentSpec, divisor: int) -> tuple[int, int]:
    """The export input size, which must be a multiple of the network's size divisibility."""
    cfg = spec.export
    bad = [f"export.{k}={v} is not a multiple of {divisor} (model.one_former.size_divisibility)"
           for k, v in (("input_height", cfg.input_height), ("input_width", cfg.input_width)) if v % divisor]
    if bad:
        raise SpecError(bad)
    return cfg.input_height, cfg.input_width


def output_path(value: str | None, default: Path, overwrite: bool, key: str, flag: str) -> Path:
    """The file an action will write; an existing one is an error unless the overwrite flag is set."""
    path = Path(value) if value else default
    if path.exists() and not overwrite:
        raise ConversionError(f"{key}: {path} already exists; set {flag}=true to replace it, or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_onnx(graph: TaskGraph, path: Path, size: tuple[int, int], batch: int, opset: int, info: ModelInfo) -> None:
    """Trace to ONNX, embed the model metadata, and run onnx.checker."""
    names = OUTPUT_NAMES[graph.output]
    dummy = torch.zeros(max(batch, 1), 3, *size)
    axes = {n: {0: "batch"} for n in ["pixel_values", *names]} if batch == -1 else None
    with exportable():
        torch.onnx.export(graph, (dummy,), str(path), input_names=["pixel_values"], output_names=names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load(str(path))
    meta = {META_KEY: info.to_json(), "task": str(info.task), "output": info.output,
            "input_size": f"{size[0]}x{size[1]}", "classes": ",".join(x["name"] for x in info.label_map),
            "source_sha256": info.source_sha256}
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_checkpoint(checkpoint: Path, out: Path, spec: ExperimentSpec, min_agreement: float) -> dict:
    """Export one checkpoint to `out` (atomically) and return the parity report; the core of every export."""
    cfg = spec.export
    torch_model = TorchPredictor(checkpoint, device="cpu")
    size = check_size(spec, torch_model.info.size_divisibility)
    kind = output_kind(cfg.task, cfg.semantic_output)
    info = ModelInfo(task=cfg.task, output=kind, input_size=list(size), mean=torch_model.info.mean,
                     std=torch_model.info.std, label_map=torch_model.info.label_map,
                     contiguous_id=torch_model.info.contiguous_id,
                     size_divisibility=torch_model.info.size_divisibility, source=str(checkpoint),
                     source_sha256=sha256(checkpoint))
    graph = TaskGraph(torch_model.net, torch_model.text.task_ids[cfg.task], kind).eval()
    tmp = out.with_name(f".{out.name}.partial")
    t0 = time.monotonic()
    try:
        log.info("export: tracing %s for the %s task at %dx%d (batch %s, opset %d)", checkpoint, cfg.task, *size,
                 "dynamic" if cfg.batch_size == -1 else cfg.batch_size, cfg.opset_version)
        write_onnx(graph, tmp, size, cfg.batch_size, cfg.opset_version, info)
        images = sample_images(spec, cfg.parity_images, "export's parity check")
        session = OnnxPredictor(tmp)
        log.info("export: comparing PyTorch and ONNX Runtime on %d images", len(images))
        report = compare(graph.outputs, lambda p: session(p, cfg.task), images, info)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report = {"source": str(checkpoint), "source_sha256": info.source_sha256, "onnx_file": str(out),
              "task": cfg.task, "output": kind, "input_size": list(size), "batch_size": cfg.batch_size,
              "opset_version": cfg.opset_version, **report, "min_agreement": min_agreement,
              "passed": report["agreement"] >= min_agreement, "seconds": round(time.monotonic() - t0, 2)}
    write_json(out.with_name(out.name + ".report.json"), report)
    if not report["passed"]:
        tmp.unlink(missing_ok=True)
        raise ConversionError(f"export: ONNX Runtime agrees with PyTorch on {report['agreement']:.4%} of pixels, "
                              f"below export.min_agreement={min_agreement}; see {out}.report.json")
    os.replace(tmp, out)
    return report


def export(spec: ExperimentSpec) -> dict:
    """The export action: resolve the checkpoint, write export.onnx_file and its parity report."""
    cfg = spec.export
    out_dir = spec.action_dir("export")
    checkpoint = resolve(cfg.checkpoint, spec.action_dir("train"), "export.checkpoint")
    out = output_path(cfg.onnx_file, out_dir / "model.onnx", cfg.overwrite, "export.onnx_file", "export.overwrite")
    status = StatusWriter(out_dir)
    status.write("STARTED", f"Export of {checkpoint}")
    try:
        report = export_checkpoint(checkpoint, out, spec, cfg.min_agreement)
    except Exception as exc:
        status.write("FAILURE", f"{type(exc).__name__}: {exc}")
        raise
    log.info("export: wrote %s (agreement %.4f%%, max abs diff %s)", out, 100 * report["agreement"],
             {k: f"{v:.2e}" for k, v in report["max_abs_diff"].items()})
    status.write("SUCCESS", f"Exported {out}", kpi={"agreement": report["agreement"]})
    return report
