"""The export action: a checkpoint to ONNX for one task, checked against PyTorch on real images."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from transformers.models.mask2former import modeling_mask2former
from transformers.models.oneformer import modeling_oneformer

from oneformer.arch_spec import divisibility
from oneformer.artifacts import StatusWriter, atomic_path, output_path, sha256, write_json
from oneformer.errors import ConversionError, SpecError
from oneformer.model.checkpoint import resolve
from oneformer.model.foreign import read_any
from oneformer.model.network import forward
from oneformer.parity import compare, sample_images
from oneformer.runtime.onnx import OnnxPredictor
from oneformer.runtime.postprocess import semantic_scores
from oneformer.runtime.predictor import META_KEY, ModelInfo, Outputs, outputs_from, run_batch
from oneformer.runtime.torch import TorchPredictor
from oneformer.spec import ExperimentSpec

log = logging.getLogger(__name__)

OUTPUT_NAMES = {"logits": ["class_logits", "mask_logits"], "scores": ["scores"], "labels": ["labels"]}
MIN_OPSET = 16  # GridSample (the pixel decoder's deformable attention) exists from opset 16


class TaskGraph(torch.nn.Module):
    """The network with OneFormer's task text fixed in a buffer (Mask2Former and SegFormer take none): pixel_values
    in, the exported task's outputs out."""

    def __init__(self, net: torch.nn.Module, task_ids: torch.Tensor | None, output: str) -> None:
        super().__init__()
        self.net, self.output = net, output
        self.task_inputs: torch.Tensor | None
        if task_ids is not None:
            self.register_buffer("task_inputs", task_ids[None].clone())
        else:
            self.task_inputs = None

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = self.task_inputs.expand(pixel_values.shape[0], -1) if self.task_inputs is not None else None
        out = forward(self.net, pixel_values, tokens)
        if "scores" in out:  # SegFormer's per-class logits
            scores = out["scores"]
        elif self.output == "logits":
            return out["class_logits"], out["mask_logits"]
        else:
            scores = semantic_scores(out["class_logits"], out["mask_logits"])
        if self.output == "scores":
            return (scores,)
        up = F.interpolate(scores, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        return (up.argmax(1),)

    def outputs(self, pixels: torch.Tensor) -> Outputs:
        """Eager outputs named as in the graph, for the parity check."""
        with torch.no_grad():
            values = self(pixels)
        return outputs_from(OUTPUT_NAMES[self.output], [v.numpy() for v in values])


def prediction_heads(self: modeling_oneformer.OneFormerTransformerDecoder, output: torch.Tensor,
                     mask_features: torch.Tensor, attention_mask_target_size: tuple[int, int]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OneFormerTransformerDecoder.forward_prediction_heads as MatMuls, the attention mask made at its own size.

    Einsum is slow in ONNX Runtime and never quantized, so the mask product becomes a MatMul. The attention mask
    resized the full-size mask logits; bilinear resizing is linear per channel, so resizing the mask features
    first gives the same logits with a product up to 64x smaller (only the last layer's full-size masks remain).
    """
    decoder_output = self.decoder_norm(output).transpose(0, 1)
    outputs_class = self.class_embed(decoder_output)
    mask_embed = self.mask_embed(decoder_output)
    batch, _, height, width = mask_features.shape
    outputs_mask = torch.matmul(mask_embed, mask_features.flatten(2)).view(batch, -1, height, width)
    small = F.interpolate(mask_features, size=attention_mask_target_size, mode="bilinear", align_corners=False)
    logits = torch.matmul(mask_embed, small.flatten(2))
    attention_mask = logits.sigmoid().unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1) < 0.5
    return outputs_class, outputs_mask, attention_mask.detach()


def mask_predictor(self: modeling_mask2former.Mask2FormerMaskPredictor, outputs: torch.Tensor,
                   pixel_embeddings: torch.Tensor, attention_mask_target_size: tuple[int, int] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask2FormerMaskPredictor.forward as MatMuls with the attention mask made at its own size: the same rewrite,
    for the same reasons, as `prediction_heads` (Einsum slow in ONNX Runtime and never quantized; the bilinear
    resize moved before the product, which it commutes with)."""
    mask_embeddings = self.mask_embedder(outputs.transpose(0, 1))
    batch, _, height, width = pixel_embeddings.shape
    outputs_mask = torch.matmul(mask_embeddings, pixel_embeddings.flatten(2)).view(batch, -1, height, width)
    small = F.interpolate(pixel_embeddings, size=attention_mask_target_size, mode="bilinear", align_corners=False)
    logits = torch.matmul(mask_embeddings, small.flatten(2))
    attention_mask = logits.sigmoid().unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1) < 0.5
    return outputs_mask, attention_mask.detach()


def deformable_attention(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                         weights: torch.Tensor) -> torch.Tensor:
    """transformers' multi_scale_deformable_attention with float32 locations and no stack of sampled values.

    Under tracing the sampling locations arrive as float64, which becomes a float64 GridSample that ONNX Runtime
    cannot run; casting them to the value dtype is exact for float32 models. Weighting and summing each level's
    samples separately gives the same sums without the copy that stacking them costs (an inner-axis Concat of
    ~100 MB per layer at 640x640).
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    values = value.split([int(h) * int(w) for h, w in shapes], dim=1)
    grids = 2 * locations.to(value.dtype) - 1
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    output = None
    for level, (height, width) in enumerate(shapes):
        value_l = values[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, int(height), int(width))
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        part = (sampled * weights[..., level, :]).sum(-1)
        output = part if output is None else output + part
    return output.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


@contextmanager
def exportable() -> Iterator[None]:
    """transformers' OneFormer and Mask2Former made exportable and fast while the export runs (site-packages stay
    untouched).

    The deformable attention (both), OneFormer's prediction heads and Mask2Former's mask predictor are traced as
    `deformable_attention`, `prediction_heads` and `mask_predictor`: the same outputs, in a form ONNX Runtime can
    run and runs faster.
    """
    original = modeling_oneformer.multi_scale_deformable_attention
    original_m2f = modeling_mask2former.multi_scale_deformable_attention
    predictor = modeling_mask2former.Mask2FormerMaskPredictor.forward
    decoder = modeling_oneformer.OneFormerTransformerDecoder
    heads = decoder.forward_prediction_heads
    modeling_oneformer.multi_scale_deformable_attention = deformable_attention
    modeling_mask2former.multi_scale_deformable_attention = deformable_attention
    modeling_mask2former.Mask2FormerMaskPredictor.forward = mask_predictor
    decoder.forward_prediction_heads = prediction_heads
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
            yield
    finally:
        modeling_oneformer.multi_scale_deformable_attention = original
        modeling_mask2former.multi_scale_deformable_attention = original_m2f
        modeling_mask2former.Mask2FormerMaskPredictor.forward = predictor
        decoder.forward_prediction_heads = heads


def output_kind(task: str, semantic_output: str) -> str:
    """semantic -> per-class scores (or the label map); instance/panoptic -> class and mask logits."""
    return semantic_output if task == "semantic" else "logits"


def check_size(spec: ExperimentSpec, divisor: int) -> tuple[int, int]:
    """The export input size, which must be a multiple of the network's size divisibility."""
    cfg = spec.export
    where = {"oneformer": "model.one_former.size_divisibility", "mask2former": "model.mask_former.size_divisibility",
             "segformer": "SegFormer's four stride-2 stages"}[spec.arch]
    bad = [f"export.{k}={v} is not a multiple of {divisor} ({where})"
           for k, v in (("input_height", cfg.input_height), ("input_width", cfg.input_width)) if v % divisor]
    if bad:
        raise SpecError(bad)
    return cfg.input_height, cfg.input_width


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
            "input_size": f"{size[0]}x{size[1]}",
            "classes": ",".join(x["name"] for x in info.label_map if "alias_of" not in x),
            "source_sha256": info.source_sha256}
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def opset(requested: int) -> int:
    """export.opset_version, raised to MIN_OPSET with a note: TAO's documented 12 cannot hold GridSample."""
    if requested >= MIN_OPSET:
        return requested
    log.warning("export: export.opset_version %d raised to %d, the lowest opset that holds OneFormer's graph "
                "(GridSample, in the pixel decoder's deformable attention, exists from opset 16)", requested, MIN_OPSET)
    return MIN_OPSET


def export_checkpoint(checkpoint: Path, out: Path, spec: ExperimentSpec, min_agreement: float) -> dict:
    """Export one checkpoint to `out` (atomically) and return the parity report; the core of every export."""
    cfg = spec.export
    torch_model = TorchPredictor(checkpoint, device="cpu", spec=spec)  # spec: the network of a TAO / Detectron2 file
    size = check_size(spec, torch_model.info.size_divisibility)
    kind = output_kind(cfg.task, cfg.semantic_output)
    if cfg.task not in torch_model.info.tasks:
        raise SpecError([f"export.task={cfg.task}: this {torch_model.info.arch} model predicts "
                         f"{', '.join(torch_model.info.tasks)}; export one of those"])
    info = ModelInfo(task=cfg.task, output=kind, input_size=list(size), mean=torch_model.info.mean,
                     std=torch_model.info.std, label_map=torch_model.info.label_map,
                     contiguous_id=torch_model.info.contiguous_id,
                     size_divisibility=torch_model.info.size_divisibility, source=str(checkpoint),
                     source_sha256=sha256(checkpoint), arch=torch_model.info.arch, tasks=[cfg.task])
    task_ids = torch_model.text.task_ids[cfg.task] if torch_model.text is not None else None
    graph = TaskGraph(torch_model.net, task_ids, kind).eval()
    images = sample_images(spec, cfg.parity_images, "export's parity check")  # before tracing: a missing set fails fast
    t0 = time.monotonic()
    version = opset(cfg.opset_version)
    with atomic_path(out) as tmp:  # the ONNX file appears only once it passed its parity check
        log.info("export: tracing %s for the %s task at %dx%d (batch %s, opset %d)", checkpoint, cfg.task, *size,
                 "dynamic" if cfg.batch_size == -1 else cfg.batch_size, version)
        write_onnx(graph, tmp, size, cfg.batch_size, version, info)
        session = OnnxPredictor(tmp)
        log.info("export: comparing PyTorch and ONNX Runtime on %d images", len(images))
        parity = compare(graph.outputs, lambda p: run_batch(session, p, cfg.task), images, info)
        report = {"source": str(checkpoint), "source_sha256": info.source_sha256, "onnx_file": str(out),
                  "task": cfg.task, "output": kind, "input_size": list(size), "batch_size": cfg.batch_size,
                  "opset_version": version, "opset_requested": cfg.opset_version, **parity,
                  "min_agreement": min_agreement, "passed": parity["agreement"] >= min_agreement,
                  "seconds": round(time.monotonic() - t0, 2)}
        write_json(out.with_name(out.name + ".report.json"), report)
        if not report["passed"]:
            raise ConversionError(f"export: ONNX Runtime agrees with PyTorch on {report['agreement']:.4%} of "
                                  f"pixels, below export.min_agreement={min_agreement}; see {out}.report.json")
    return report


def export(spec: ExperimentSpec) -> dict:
    """The export action: resolve the checkpoint, write export.onnx_file and its parity report."""
    cfg = spec.export
    out_dir = spec.action_dir("export")
    checkpoint = resolve(cfg.checkpoint, spec.action_dir("train"), "export.checkpoint", spec.arch)
    # the size check before anything is written; mapped, so the weights are read once, by the export itself
    ckpt = read_any(checkpoint, "export.checkpoint", mmap=True, spec=spec)
    check_size(spec, divisibility(ckpt.hf_config.get("model_type", "oneformer"), ckpt.spec.get("model", {})))
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
