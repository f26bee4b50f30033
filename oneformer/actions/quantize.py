"""The quantize action: static INT8 post-training quantization (QDQ) calibrated on real images."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from oneformer.actions import not_set
from oneformer.actions.export import export_checkpoint
from oneformer.artifacts import StatusWriter, atomic_path, output_path, write_json
from oneformer.data.readers import list_images, read_image
from oneformer.data.staging import stage
from oneformer.errors import CheckpointError, DataError
from oneformer.evaluation.score import score
from oneformer.model.checkpoint import resolve
from oneformer.parity import compare, sample_images
from oneformer.runtime.onnx import OnnxPredictor
from oneformer.runtime.predictor import META_KEY, ModelInfo, prepare, run_batch
from oneformer.spec import ExperimentSpec

log = logging.getLogger(__name__)

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
OPS = ["Conv", "MatMul", "Gemm"]  # where INT8 pays; quantizing everything else costs accuracy for little speed
# MatMul/Gemm outputs stay float: ONNX Runtime runs DQ -> MatMul as MatMulIntegerToFloat, with no requantize + DQ
# of the output before its bias Add (measured: ~10% of the INT8 time at 640x640)
FLOAT_OUTPUTS = ["MatMul", "Gemm"]


class ImageCalibration(CalibrationDataReader):
    """Calibration batches: the model's own preprocessing over the calibration images, `batch` at a time (a graph
    exported with a fixed export.batch_size takes only that many; the last batch is filled up from the first
    images, real pictures whose ranges are already counted)."""

    def __init__(self, images: list[Path], info: ModelInfo, input_name: str, batch: int = 1) -> None:
        self.images, self.info, self.input, self.batch = images, info, input_name, batch
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.images):
            return None
        paths = self.images[self.index : self.index + self.batch]
        self.index += len(paths)
        paths += [self.images[i % len(self.images)] for i in range(self.batch - len(paths))]
        if self.index % 8 < len(paths) or self.index == len(self.images):
            log.info("quantize: calibrating %d/%d images", self.index, len(self.images))
        preps = [prepare(read_image(path), tuple(self.info.input_size), self.info.mean, self.info.std,
                         self.info.size_divisibility) for path in paths]
        return {self.input: np.concatenate([p.pixels.numpy() for p in preps])}

    def rewind(self) -> None:
        self.index = 0


def excluded_nodes(model: onnx.ModelProto, per_channel: bool) -> list[str]:
    """MatMuls that INT8 would break: activation x activation (attention), and rank-3 constant weights.

    Attention products have two activation inputs; quantizing both asymmetrically destroyed the output in our
    measurements (0-61% agreement). A MatMul whose constant B has rank 3 cannot take per-channel scales.
    """
    constants = {t.name: len(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = len(numpy_helper.to_array(node.attribute[0].t).shape)
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        a, b = node.input[0], node.input[1]
        if a not in constants and b not in constants:
            out.append(node.name)
        elif per_channel and b in constants and constants[b] != 2:
            out.append(node.name)
    return out


def shapes_skip_dequantize(model: onnx.ModelProto) -> int:
    """Shape ops read a DequantizeLinear's INT8 input (same shape) so that no dequantize runs just for a shape.

    QDQ insertion makes every consumer of a quantized tensor read the DQ output, and ONNX Runtime gives each its
    own DQ: ~60 full-tensor dequantizes per run only fed Shape. Rewiring the other float consumers to the float
    source as well measured slower, so only Shape is rewired. Returns how many were.
    """
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    count = 0
    for node in model.graph.node:
        if node.op_type == "Shape" and node.input[0] in dequantized:
            node.input[0] = dequantized[node.input[0]]
            count += 1
    return count


def model_source(spec: ExperimentSpec) -> Path:
    """quantize.model_path resolved and checked: an ONNX file, or a checkpoint (best/latest from a train folder)."""
    source = spec.quantize.model_path
    if source.lower().endswith(".onnx"):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"quantize.model_path: {path} does not exist")
        return path
    return resolve(source, spec.action_dir("train"), "quantize.model_path", spec.arch)


def fp32_model(source: Path, spec: ExperimentSpec, out_dir: Path) -> Path:
    """The source as an FP32 ONNX file; a checkpoint is exported first."""
    if source.suffix.lower() == ".onnx":
        return source
    path = out_dir / "model.onnx"
    log.info("quantize: exporting %s first (export.* settings)", source)
    path.unlink(missing_ok=True)
    export_checkpoint(source, path, spec, spec.export.min_agreement)
    return path


def calibration_images(spec: ExperimentSpec) -> list[Path]:
    """dataset.quant_calibration_dataset.images_dir, staged; missing or empty is an error."""
    key = "dataset.quant_calibration_dataset.images_dir"
    value = spec.dataset.quant_calibration_dataset.images_dir
    if not value:
        raise DataError(not_set("quantize", key))
    return list_images(stage(value, key), key)[: spec.quantize.num_calibration_images]


def quantize_onnx(fp32: Path, out: Path, images: list[Path], spec: ExperimentSpec, info: ModelInfo,
                  source_meta: dict[str, str]) -> list[str]:
    """QDQ INT8 (U8 activations, S8 weights; MatMul/Gemm outputs float) to `out`; returns the excluded nodes."""
    cfg = spec.quantize
    pre = out.with_name(f".{out.name}.pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # the traced graph defeats symbolic infer
        model = onnx.load(str(pre))
        exclude = excluded_nodes(model, cfg.per_channel)
        log.info("quantize: %s calibration on %d images, %d MatMuls left in FP32", cfg.calibration_method,
                 len(images), len(exclude))
        batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1  # 0: a dynamic batch axis
        reader = ImageCalibration(images, info, model.graph.input[0].name, batch)
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=OPS,
                        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=METHODS[cfg.calibration_method],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                       "OpTypesToExcludeOutputQuantization": FLOAT_OUTPUTS})
    finally:
        pre.unlink(missing_ok=True)
        for extra in out.parent.glob("augmented_model*.onnx"):  # onnxruntime's calibration scratch
            extra.unlink(missing_ok=True)
    int8 = onnx.load(str(out))
    log.info("quantize: %d Shape ops read INT8 tensors", shapes_skip_dequantize(int8))
    meta = {**source_meta, META_KEY: replace(info, precision="int8").to_json()}
    del int8.metadata_props[:]
    for key, value in meta.items():
        int8.metadata_props.add(key=key, value=value)
    onnx.save(int8, str(out))
    return exclude


def quantize(spec: ExperimentSpec) -> dict:
    """The quantize action: FP32 ONNX (exported if needed) -> INT8 QDQ ONNX with an accuracy report."""
    cfg = spec.quantize
    out_dir = spec.action_dir("quantize")
    images = calibration_images(spec)
    compare_on = sample_images(spec, spec.export.parity_images, "quantize's agreement check")
    source = model_source(spec)
    out = output_path(cfg.onnx_file, out_dir / "model.int8.onnx", cfg.overwrite, "quantize.onnx_file",
                      "quantize.overwrite")
    status = StatusWriter(out_dir)
    status.write("STARTED", "Quantization started")
    t0 = time.monotonic()
    try:
        with atomic_path(out) as tmp:  # the INT8 file appears only once it is scored
            fp32 = fp32_model(source, spec, out_dir)
            reference = OnnxPredictor(fp32)
            exclude = quantize_onnx(fp32, tmp, images, spec, reference.info,
                                    reference.session.get_modelmeta().custom_metadata_map)
            int8 = OnnxPredictor(tmp)
            task = reference.info.task
            log.info("quantize: comparing INT8 with FP32")
            parity = compare(lambda p: run_batch(reference, p, task), lambda p: run_batch(int8, p, task), compare_on,
                             reference.info)
            log.info("quantize: scoring FP32 and INT8 on the validation split")
            metrics = {"fp32": score(reference, spec, prefer="val").result(),
                       "int8": score(int8, spec, prefer="val").result()}
            miou = {k: v.get("mIoU") for k, v in metrics.items()}
            report = {"source": str(fp32), "onnx_file": str(out), "task": task,
                      "calibration_method": cfg.calibration_method, "calibration_images": len(images),
                      "per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range, "ops": OPS,
                      "excluded_nodes": len(exclude), **parity, "mIoU": miou, "metrics": metrics,
                      **gate(miou, parity["agreement"], cfg.max_miou_drop, cfg.min_agreement),
                      "size_mb": {"fp32": round(fp32.stat().st_size / 2**20, 2),
                                  "int8": round(tmp.stat().st_size / 2**20, 2)},
                      "seconds": round(time.monotonic() - t0, 2)}
            write_json(out.with_name(out.name + ".report.json"), report)
    except BaseException as exc:
        status.write("FAILURE", f"{type(exc).__name__}: {exc}")
        raise
    if not report["passed"]:  # a quality verdict, not an error: the file and its report stay for the record
        log.warning("quantize: INT8 misses its gate: %s; see %s.report.json", report["verdict"], out)
    log.info("quantize: wrote %s (agreement %.2f%%, mIoU fp32 %.4f -> int8 %.4f)", out, 100 * parity["agreement"],
             report["mIoU"]["fp32"] or 0, report["mIoU"]["int8"] or 0)
    status.write("SUCCESS", f"Quantized {out}: gate {'passed' if report['passed'] else 'FAILED'}", kpi={
        "agreement": parity["agreement"], "gate_passed": report["passed"],
        **{f"mIoU_{k}": v for k, v in report["mIoU"].items()}})
    return report


def gate(miou: dict[str, float | None], agreement: float, max_drop: float, min_agreement: float | None) -> dict:
    """The INT8 gate: validation mIoU within `max_drop` of FP32's, and agreement above the optional floor."""
    fp32, int8 = miou.get("fp32"), miou.get("int8")
    reasons = []
    drop = None if fp32 is None or int8 is None else round(fp32 - int8, 6)
    if drop is None:
        reasons.append("no validation mIoU to compare")
    elif drop > max_drop:
        reasons.append(f"INT8 mIoU {int8:.4f} is {drop:.4f} below FP32's {fp32:.4f} "
                       f"(quantize.max_miou_drop={max_drop})")
    if min_agreement is not None and agreement < min_agreement:
        reasons.append(f"INT8 agrees with FP32 on {agreement:.4%} of pixels, below "
                       f"quantize.min_agreement={min_agreement}")
    verdict = "; ".join(reasons) or (f"mIoU drop {drop:.4f} <= {max_drop}" + (
        f", agreement {agreement:.4%} >= {min_agreement}" if min_agreement is not None else ""))
    return {"miou_drop": drop, "max_miou_drop": max_drop, "min_agreement": min_agreement,
            "passed": not reasons, "verdict": verdict}
