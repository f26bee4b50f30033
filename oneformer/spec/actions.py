"""The sections of the actions after training: evaluate, inference, export, quantize and gen_trt_engine, with the
runtime backend and precision they share."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator

from oneformer.sections import Section, section
from oneformer.spec.dataset import Task

log = logging.getLogger("oneformer.spec")  # one logger for the whole spec package, as before the split

RuntimeBackend = Literal["auto", "torch", "onnxruntime", "openvino", "tensorrt"]
RuntimePrecision = Literal["auto", "fp32", "bf16", "int8"]
BACKEND_HELP = ("What runs the model: auto (a checkpoint on torch, an engine on tensorrt, an ONNX file on the "
                "fastest of onnxruntime and openvino whose parity against ONNX Runtime passed on this machine, "
                "measured once into <file>.backends.json), torch (checkpoints), onnxruntime or openvino (ONNX files; "
                "openvino needs the package: pip install 'oneformer-pipeline[openvino]'), tensorrt (trt_engine)")
PRECISION_HELP = ("Runtime precision (not train.precision): auto (the file's own, fp32 or int8 for a quantized "
                  "file; with backend auto also OpenVINO bf16 where this CPU has it and it is faster and passes "
                  "parity), fp32, bf16 (OpenVINO on a CPU with AVX512-BF16 or AMX) or int8 (the INT8 file's own: "
                  "checks the file is one)")
EVALUATE_PRECISION_HELP = ("Runtime precision (not train.precision): auto (the file's own, fp32 or int8 for a "
                           "quantized file, on the fastest backend at that precision whose parity passed; never bf16, "
                           "so the metrics are the file's and nights compare), fp32, bf16 (OpenVINO on a CPU with "
                           "AVX512-BF16 or AMX: scores the FP32 file in bf16) or int8 (the INT8 file's own: checks "
                           "the file is one)")
PRECISION_ALIASES = {"fp32": "fp32", "float32": "fp32", "32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
                     "int8": "int8", "auto": "auto"}


def runtime_precision(section: str) -> Callable[[Any], Any]:
    """A validator reading FP32, float32, 32, BF16, bfloat16 ... as the runtime's names (with a warning naming
    <section>.precision); anything else is left to the Literal's error, which lists the allowed values."""

    def normalize(v: Any) -> Any:
        key = str(v).strip().lower()
        if key in PRECISION_ALIASES and PRECISION_ALIASES[key] != v:
            log.warning("%s.precision %r normalized to %r", section, v, PRECISION_ALIASES[key])
            return PRECISION_ALIASES[key]
        return v

    return normalize


class EvaluateConfig(Section):
    """Evaluation of a checkpoint, ONNX file, engine, or prediction files."""

    checkpoint: str = Field("best", description="A .pth, 'best' or 'latest' (from the train folder)")
    trt_engine: str | None = Field(None, description="TensorRT engine to evaluate instead of checkpoint")
    predictions: str | None = Field(None, description="Folder of prediction files to score instead (semantic/*.png, "
                                    "panoptic.json + PNGs, COCO results JSON; see the README's metric contract)")
    semantic_ids: Literal["auto", "raw", "contiguous"] = Field(
        "auto", description="What the values of semantic prediction PNGs are: raw category ids (0 and "
                            "dataset.ignore_value unlabeled; what `oneformer inference` writes) or contiguous class "
                            "indices 0..N-1 (dataset.ignore_value unlabeled). auto: whichever alone fits every file; "
                            "a file both fit differently is an error asking to set this")
    missing_predictions: Literal["error", "empty"] = Field(
        "error", description="An image of the evaluation split with no prediction: an error naming it, or scored "
                             "as an empty prediction by every metric")
    num_gpus: int = Field(1, ge=0, description="0: the CPU; otherwise the checkpoint or engine runs on one GPU, the "
                                               "first of gpu_ids (a larger batch_size uses it better)")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU ids; evaluation runs on the first")
    backend: RuntimeBackend = Field("auto", description=BACKEND_HELP)
    precision: RuntimePrecision = Field("auto", description=EVALUATE_PRECISION_HELP)
    results_dir: str | None = Field(None, description="Where metrics.json and per_class_iou.csv go; default "
                                                      "<results_dir>/evaluate")
    batch_size: int | None = Field(None, ge=1, description="Images per forward pass, zero-padded to the largest "
                                                           "of the batch; empty: the scored split's batch_size")
    iou_per_class: bool = Field(True, description="Also log the per-class IoU table (per_class_iou.csv is "
                                                  "written either way)")
    max_images: int | None = Field(None, gt=0, description="Evaluate only the first N images")

    _precision = field_validator("precision", mode="before")(runtime_precision("evaluate"))


class InferenceConfig(Section):
    """Prediction over a folder of images."""

    checkpoint: str = Field("best", description="A .pth, 'best' or 'latest' (from the train folder)")
    trt_engine: str | None = Field(None, description="TensorRT engine to run instead of checkpoint")
    mode: Task = Field("semantic", description="Task predicted: semantic (label PNGs), panoptic (COCO panoptic "
                                               "JSON and PNGs) or instance (COCO results JSON), with overlays")
    images_dir: str | None = Field(None, description="Folder, .tar.gz archive or URL of images")
    image_size: list[int] = Field(default_factory=lambda: [1024, 1024], description="Network input [H, W] (or "
                                  "[S]); default [dataset.image_size] * 2; a fixed-size ONNX file or engine takes "
                                  "its own")
    keep_aspect_ratio: bool = Field(False, description="Resize each image to fit inside image_size with its own "
                                                       "aspect ratio instead of stretching it to image_size")
    results_dir: str | None = Field(None, description="Where predictions and overlays go; default "
                                                      "<results_dir>/inference")
    num_gpus: int = Field(1, ge=0, description="0: the CPU; otherwise one GPU, the first of gpu_ids")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU ids; inference runs on the first")
    backend: RuntimeBackend = Field("auto", description=BACKEND_HELP)
    precision: RuntimePrecision = Field("auto", description=PRECISION_HELP)
    batch_size: int = Field(1, ge=1, description="Images per forward pass (zero-padded to the largest with "
                                                 "keep_aspect_ratio)")
    opacity: float = Field(0.5, ge=0, le=1, description="Overlay blend of the colored label map")
    draw_labels: bool = Field(True, description="Overlays name each segment's class and box each instance")

    _precision = field_validator("precision", mode="before")(runtime_precision("inference"))


class ExportConfig(Section):
    """ONNX export."""

    checkpoint: str = Field("best", description="A .pth, 'best' or 'latest' (from the train folder)")
    onnx_file: str | None = Field(None, description="Output path; default <results_dir>/export/model.onnx")
    on_cpu: bool = Field(True, description="The export always traces on the CPU (the graph is the same on any "
                                           "device); false is noted")
    opset_version: int = Field(17, ge=7, description="ONNX opset; below 16 (TAO documents 12) the export uses 16, "
                                                     "the lowest that holds GridSample, with a note")
    input_channel: Literal[3] = Field(3, description="RGB only, as in TAO")
    input_width: int = Field(640, gt=0, description="Width of the ONNX input in pixels, fixed in the graph (default "
                                                    "Mask2Former 960, SegFormer dataset.segment.img_size); a "
                                                    "multiple of the network's size_divisibility "
                                                    "(model.one_former's, model.mask_former's; 32 for SegFormer)")
    input_height: int = Field(640, gt=0, description="Height of the ONNX input in pixels, fixed in the graph "
                                                     "(default Mask2Former 544, SegFormer dataset.segment.img_size); a "
                                                     "multiple of the network's size_divisibility "
                                                     "(model.one_former's, model.mask_former's; 32 for SegFormer)")
    batch_size: int = Field(-1, ge=-1, description="Batch of the ONNX input; -1: a dynamic batch axis")
    task: Task = Field("semantic", description="Task the graph answers (its task text is built in): semantic "
                                               "outputs what semantic_output says; instance and panoptic output "
                                               "class and mask logits")
    semantic_output: Literal["scores", "labels"] = Field(
        "scores", description="semantic task: per-class scores [B,C,H/4,W/4] or the label map [B,H,W]")
    overwrite: bool = Field(False, description="Replace an existing onnx_file instead of failing")
    results_dir: str | None = Field(None, description="Export folder (status, and model.onnx where onnx_file is "
                                                      "empty); default <results_dir>/export")
    min_agreement: float = Field(0.99, ge=0, le=1, description="Fail if ONNX/PyTorch label agreement is lower")
    parity_images: int = Field(8, gt=0, description="Validation images the parity check compares on")


class QuantizeConfig(Section):
    """INT8 post-training quantization."""

    model_path: str = Field("best", description="An ONNX file or a checkpoint")
    onnx_file: str | None = Field(None, description="INT8 QDQ ONNX file to write; default "
                                                    "<quantize folder>/model.int8.onnx")
    results_dir: str | None = Field(None, description="Quantize folder (status, the exported FP32 model of a "
                                                      "checkpoint); default <results_dir>/quantize")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How ONNX Runtime sets activation ranges from the calibration images: min/max, "
                              "entropy or percentile")
    num_calibration_images: int = Field(16, gt=0, description="Calibration images used: the first N of "
                                                              "dataset.quant_calibration_dataset.images_dir")
    per_channel: bool = Field(True, description="One weight scale per output channel instead of per tensor "
                                                "(MatMuls whose weight is not 2-D stay FP32 then)")
    reduce_range: bool = Field(True, description="7-bit weights. x86 CPUs without VNNI (AVX2-only) saturate U8xS8 "
                                                 "products of 8-bit weights and the INT8 model goes wrong there "
                                                 "(93% vs 99% agreement measured); off only for VNNI-only targets")
    max_miou_drop: float = Field(0.01, ge=0, le=1, description="The INT8 gate: validation mIoU may drop at most "
                                                               "this much below the FP32 model's")
    min_agreement: float | None = Field(None, ge=0, le=1, description="Optional second gate: INT8-vs-FP32 pixel "
                                                                      "agreement (always reported)")
    overwrite: bool = Field(False, description="Replace an existing onnx_file instead of failing")
    backend: str | None = Field(None, description="TAO's quantization backend (modelopt.onnx, torchao): noted; "
                                                  "ONNX Runtime's static QDQ quantization runs")
    mode: Literal["static_ptq"] | None = Field(None, description="TAO's quantization mode: static post-training "
                                                                 "quantization, the one that runs here")


class TrtCalibrationConfig(Section):
    """TAO's TensorRT INT8 calibrator keys (accepted; the QDQ model carries its own scales)."""

    cal_image_dir: list[str] | str | None = Field(None, description="TAO's calibration image folders; accepted, "
                                                                    "unused")
    cal_cache_file: str | None = Field(None, description="TAO's INT8 calibration cache file; accepted, unused")
    cal_batch_size: int = Field(1, gt=0, description="TAO's images per calibration batch; accepted, unused")
    cal_batches: int = Field(1, gt=0, description="TAO's number of calibration batches; accepted, unused")


class TensorRTConfig(Section):
    """TensorRT builder settings."""

    data_type: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="Engine precision: fp32, fp16 (FP16 kernels allowed) or int8 (needs the QDQ model of "
                            "`oneformer quantize`)")
    workspace_size: int = Field(4096, gt=0, description="MiB")
    min_batch_size: int = Field(1, gt=0, description="Smallest batch of the engine's optimization profile "
                                                     "(dynamic-batch ONNX only)")
    opt_batch_size: int = Field(1, gt=0, description="Batch TensorRT tunes the engine's kernels for")
    max_batch_size: int = Field(1, gt=0, description="Largest batch the engine accepts")
    timing_cache: str | None = Field(None, description="TensorRT timing cache file: read if it exists, written "
                                                       "after the build (faster rebuilds)")
    calibration: TrtCalibrationConfig = Field(
        default_factory=TrtCalibrationConfig,
        description="TAO's INT8 calibrator settings; accepted, unused: INT8 engines are built from the QDQ model "
                    "of `oneformer quantize`, whose scales are in the graph (calibrate with "
                    "dataset.quant_calibration_dataset there)")


class GenTrtEngineConfig(Section):
    """TensorRT engine generation."""

    onnx_file: str | None = Field(None, description="ONNX file to build from; default the export's model.onnx "
                                                    "(data_type int8: the quantize action's model.int8.onnx)")
    trt_engine: str | None = Field(None, description="Engine file to write; default "
                                                     "<gen_trt_engine folder>/<ONNX name>.<data_type>.engine")
    results_dir: str | None = Field(None, description="Engine folder; default <results_dir>/gen_trt_engine")
    gpu_id: int = Field(0, ge=0, description="The CUDA device the engine is built on (and tuned for)")
    overwrite: bool = Field(False, description="Replace an existing trt_engine instead of failing")
    batch_size: int = Field(-1, ge=-1, description="TAO's engine batch: > 0 fixes min/opt/max batch to it; -1 "
                                                   "takes tensorrt.*_batch_size")
    input_channel: Literal[3] = Field(3, description="RGB only, as in TAO")
    input_width: int | None = Field(None, gt=0, description="Must equal the ONNX file's input width (set at "
                                                            "export); empty: the ONNX file's")
    input_height: int | None = Field(None, gt=0, description="Must equal the ONNX file's input height (set at "
                                                             "export); empty: the ONNX file's")
    opset_version: int | None = Field(None, description="Accepted, unused: TensorRT parses the ONNX file's own "
                                                        "opset (export.opset_version sets it)")
    verbose: bool = Field(False, description="TensorRT's builder log at VERBOSE instead of WARNING")
    tensorrt: TensorRTConfig = section(TensorRTConfig)

