"""The gen_trt_engine action: a TensorRT engine from an exported (or INT8 QDQ) ONNX file, checked on real images.

Written to NVIDIA's documented TensorRT 10 Python API. Everything that decides *what* to build (precision,
shapes, workspace, names, the QDQ check, the builder flags, the Q/DQ rewrite TensorRT needs) is plain Python and
runs anywhere; only `build` and the TensorRT predictor (oneformer.runtime.tensorrt) touch TensorRT, and both
start by checking that TensorRT and a CUDA device are present.

TensorRT 11 removed the weak-typing builder flags (BuilderFlag.FP16, BuilderFlag.INT8): there, INT8 engines
still build from the QDQ model (its types are explicit), and fp16 is refused with a clear error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from oneformer.artifacts import StatusWriter, output_path, write_bytes, write_json, write_text
from oneformer.errors import CheckpointError, ConversionError, SpecError
from oneformer.parity import compare, sample_images
from oneformer.runtime.devices import cuda_device
from oneformer.runtime.onnx import OnnxPredictor
from oneformer.runtime.predictor import META_KEY, ModelInfo, run_batch
from oneformer.runtime.tensorrt import TensorRTPredictor, require_tensorrt, sidecar
from oneformer.spec import ExperimentSpec

log = logging.getLogger(__name__)


@dataclass
class BuildSettings:
    """Everything the builder needs, resolved from the spec and the ONNX file."""

    onnx_file: Path
    engine_file: Path
    precision: str
    workspace_bytes: int
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    timing_cache: Path | None
    info: ModelInfo
    verbose: bool = False
    gpu_id: int = 0
    optimization_level: int | None = None  # TensorRT's builder_optimization_level (0-5); None: its default (3)


def onnx_input(model: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """The graph's image input and its shape (None for a dynamic axis)."""
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def is_qdq(model: onnx.ModelProto) -> bool:
    """Explicitly quantized (what `oneformer quantize` writes): TensorRT takes its INT8 scales from the graph."""
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


# QuantizeLinear's integer range per zero-point type
QRANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


def symmetric_qdq(model: onnx.ModelProto) -> int:
    """Rewrite the Q/DQ pairs TensorRT cannot take into ones it can, in place; returns how many scales changed.

    TensorRT takes only symmetric INT8 quantization (int8 zero points of 0); ONNX Runtime's CPU recipe of
    `oneformer quantize` has asymmetric UINT8 activations. Each asymmetric (scale s, zero point z) covers
    [(qmin - z) s, (qmax - z) s]; the int8 scale max(-lo, hi) / 127 with zero point 0 covers the same range, so
    the calibrated ranges are kept (at up to twice the step). INT32 biases (ONNX Runtime quantizes Conv/Gemm biases
    with scale = input scale x weight scale), which TensorRT cannot dequantize, become the float constants they
    stand for (exact). Shape ops that read a quantized tensor (quantize's shortcut for ONNX Runtime) read its
    DequantizeLinear again: TensorRT's quantized tensors feed only Q/DQ. Initializers left unused are dropped.
    """
    inits = {t.name: t for t in model.graph.initializer}
    folded = fold_int32_dequantize(model, inits)
    rewritten: dict[tuple[str, str], tuple[str, str]] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        scale_name = node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if scale_name not in inits or (zp_name and zp_name not in inits):
            continue  # computed scales: left to TensorRT's parser to judge
        key = (scale_name, zp_name)
        if key not in rewritten:
            zp_type = inits[zp_name].data_type if zp_name else onnx.TensorProto.UINT8
            if zp_type not in QRANGE:
                continue  # FP8/INT4/INT16: not ours to touch
            zero = numpy_helper.to_array(inits[zp_name]).astype(np.float64) if zp_name else np.float64(0)
            if zp_type == onnx.TensorProto.INT8 and not np.any(zero):
                continue  # already what TensorRT takes
            scale = numpy_helper.to_array(inits[scale_name]).astype(np.float64)
            qmin, qmax = QRANGE[zp_type]
            sym = np.maximum((zero - qmin) * scale, (qmax - zero) * scale) / 127
            new_scale = numpy_helper.from_array(sym.astype(np.float32), f"{scale_name}_trt")
            new_zero = numpy_helper.from_array(np.zeros(np.shape(zero), np.int8), f"{zp_name or scale_name}_trt_zp")
            model.graph.initializer.extend([new_scale, new_zero])
            rewritten[key] = (new_scale.name, new_zero.name)
        names = rewritten[key]
        del node.input[1:]
        node.input.extend(names)
    dequantized = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "Shape" and node.input[0] in dequantized:
            node.input[0] = dequantized[node.input[0]]
    if folded or rewritten:
        used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
        kept = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return len(rewritten) + folded


def fold_int32_dequantize(model: onnx.ModelProto, inits: dict[str, onnx.TensorProto]) -> int:
    """DequantizeLinear nodes of constant INT32 tensors replaced by their float values; returns how many."""
    keep, count = [], 0
    for node in model.graph.node:
        args = list(node.input) + [""] * (3 - len(node.input))
        if (node.op_type != "DequantizeLinear" or args[0] not in inits
                or inits[args[0]].data_type != onnx.TensorProto.INT32
                or args[1] not in inits or (args[2] and args[2] not in inits)):
            keep.append(node)
            continue
        q = numpy_helper.to_array(inits[args[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[args[1]]).astype(np.float64)
        zero = numpy_helper.to_array(inits[args[2]]).astype(np.float64) if args[2] else np.zeros_like(scale)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and q.ndim > 1:  # per-channel along `axis`
            shape = [1] * q.ndim
            shape[axis % q.ndim] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        value = numpy_helper.from_array(((q - zero) * scale).astype(np.float32), node.output[0])
        model.graph.initializer.append(value)
        inits[value.name] = value
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return count


def builder_flags(trt: Any, precision: str) -> list[Any]:
    """The BuilderFlags for an engine precision. TensorRT 10 weak typing: FP16 lets it pick FP16 kernels, INT8
    takes the scales of the graph's Q/DQ nodes; an int8 engine gets FP16 too, so that the layers the QDQ model
    leaves float (deformable attention, softmax, norms) may run in FP16 rather than FP32 (trtexec's --int8 --fp16).
    TensorRT 11 has neither flag: its networks are strongly typed, so the QDQ model alone makes an INT8 engine and
    fp16 needs an FP16 ONNX model, which export does not write."""
    if precision == "fp32":
        return []
    flag = getattr(trt.BuilderFlag, precision.upper(), None)
    if flag is not None:
        fp16 = getattr(trt.BuilderFlag, "FP16", None) if precision == "int8" else None
        return [flag] + ([fp16] if fp16 is not None else [])
    if precision == "int8":
        return []
    raise ConversionError(f"gen_trt_engine.tensorrt.data_type={precision}: TensorRT {trt.__version__} builds only "
                          f"strongly typed networks (BuilderFlag.{precision.upper()} was removed in TensorRT 11); "
                          f"install TensorRT 10 (pip install 'tensorrt-cu12>=10,<11') for {precision} engines, or "
                          f"build fp32 or int8 (from `oneformer quantize`'s QDQ model)")


def default_onnx(spec: ExperimentSpec) -> Path:
    """The export (or, for int8, the quantize) action's output in this results folder."""
    if spec.gen_trt_engine.tensorrt.data_type == "int8":
        return Path(spec.quantize.onnx_file or spec.action_dir("quantize") / "model.int8.onnx")
    return Path(spec.export.onnx_file or spec.action_dir("export") / "model.onnx")


def engine_name(onnx_file: Path, precision: str) -> str:
    """<name>.<precision>.engine, without repeating a precision the ONNX name already carries."""
    stem = onnx_file.stem
    for tag in (".int8", ".fp16", ".fp32"):
        stem = stem.removesuffix(tag)
    return f"{stem}.{precision}.engine"


def settings(spec: ExperimentSpec) -> BuildSettings:
    """Resolve and check the build settings (no TensorRT needed)."""
    cfg, trt_cfg = spec.gen_trt_engine, spec.gen_trt_engine.tensorrt
    onnx_file = Path(cfg.onnx_file) if cfg.onnx_file else default_onnx(spec)
    if not onnx_file.is_file():
        raise CheckpointError(f"gen_trt_engine.onnx_file: {onnx_file} does not exist; run `oneformer export`"
                              + (" and `oneformer quantize`" if trt_cfg.data_type == "int8" else "") + " first")
    model = onnx.load(str(onnx_file), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in meta:
        raise CheckpointError(f"{onnx_file} has no oneformer metadata: export it with `oneformer export`")
    info = ModelInfo.from_json(meta[META_KEY], str(onnx_file))
    if trt_cfg.data_type == "int8" and not is_qdq(model):
        raise ConversionError(f"gen_trt_engine.tensorrt.data_type=int8 needs an INT8 QDQ model, and {onnx_file} "
                              f"has no QuantizeLinear nodes: run `oneformer quantize` and set "
                              f"gen_trt_engine.onnx_file to its model.int8.onnx")
    name, dims = onnx_input(model)
    tao_notes(spec, onnx_file, dims)
    batches = (trt_cfg.min_batch_size, trt_cfg.opt_batch_size, trt_cfg.max_batch_size)
    if cfg.batch_size > 0:  # TAO's one engine batch
        batches = (cfg.batch_size,) * 3
    if dims[0] is not None:  # a fixed batch in the graph wins over the spec's profile
        if set(batches) != {dims[0]}:
            log.warning("gen_trt_engine: %s has a fixed batch of %d; tensorrt.*_batch_size ignored", onnx_file,
                        dims[0])
        batches = (dims[0],) * 3
    elif not batches[0] <= batches[1] <= batches[2]:
        raise SpecError([f"gen_trt_engine.tensorrt: min_batch_size ({batches[0]}) <= opt_batch_size "
                         f"({batches[1]}) <= max_batch_size ({batches[2]}) must hold"])
    if any(d is None for d in dims[1:]):
        raise ConversionError(f"{onnx_file}: only the batch axis may be dynamic (input {name} is {dims})")
    default = spec.action_dir("gen_trt_engine") / engine_name(onnx_file, trt_cfg.data_type)
    engine = output_path(cfg.trt_engine, default, cfg.overwrite, "gen_trt_engine.trt_engine",
                         "gen_trt_engine.overwrite")
    rest = tuple(dims[1:])
    return BuildSettings(onnx_file=onnx_file, engine_file=engine, precision=trt_cfg.data_type,
                         workspace_bytes=trt_cfg.workspace_size * 2**20, input_name=name,
                         min_shape=(batches[0], *rest), opt_shape=(batches[1], *rest), max_shape=(batches[2], *rest),
                         timing_cache=Path(trt_cfg.timing_cache) if trt_cfg.timing_cache else None,
                         info=replace(info, precision=trt_cfg.data_type), verbose=cfg.verbose, gpu_id=cfg.gpu_id)


def tao_notes(spec: ExperimentSpec, onnx_file: Path, dims: list[int | None]) -> None:
    """TAO's gen_trt_engine keys checked against the ONNX file: a size it does not have is an error, and keys
    with no effect here get a one-line note."""
    cfg = spec.gen_trt_engine
    for key, want, have in (("input_height", cfg.input_height, dims[2]), ("input_width", cfg.input_width, dims[3])):
        if want is not None and want != have:
            raise ConversionError(f"gen_trt_engine.{key}={want}, but {onnx_file} takes {have}: the size is fixed at "
                                  f"export (`oneformer export export.{key}={want}`), or leave gen_trt_engine.{key} "
                                  f"empty")
    if cfg.opset_version is not None:
        log.info("gen_trt_engine: opset_version %d has no effect: TensorRT parses %s at its own opset",
                 cfg.opset_version, onnx_file)
    if cfg.tensorrt.calibration.model_fields_set:
        log.info("gen_trt_engine: tensorrt.calibration has no effect: INT8 engines are built from the QDQ model of "
                 "`oneformer quantize` (its scales are in the graph)")


def build(s: BuildSettings) -> dict:
    """Parse the ONNX file, configure the builder, and write the serialized engine (plus its metadata sidecar)."""
    trt = require_tensorrt()
    # TensorRT builds on (and tunes its kernels for) the current CUDA device: gen_trt_engine.gpu_id's
    torch.cuda.set_device(torch.device(cuda_device(s.gpu_id, "gen_trt_engine.gpu_id")))
    logger = trt.Logger(trt.Logger.VERBOSE if s.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = builder_flags(trt, s.precision)  # before any work: TensorRT 11 refuses fp16
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    model = onnx.load(str(s.onnx_file)) if s.precision == "int8" else None
    if model is not None and (changed := symmetric_qdq(model)):  # symmetric int8 Q/DQ, which TensorRT takes
        log.info("gen_trt_engine: %d asymmetric Q/DQ scales made symmetric int8 for TensorRT", changed)
        parsed = parser.parse(model.SerializeToString(), str(s.onnx_file))
    else:
        parsed = parser.parse_from_file(str(s.onnx_file))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT could not parse {s.onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s.workspace_bytes)
    for flag in flags:
        config.set_flag(flag)
    if s.optimization_level is not None:
        config.builder_optimization_level = s.optimization_level
    profile = builder.create_optimization_profile()
    profile.set_shape(s.input_name, s.min_shape, s.opt_shape, s.max_shape)
    config.add_optimization_profile(profile)
    cache_bytes = s.timing_cache.read_bytes() if s.timing_cache and s.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError(f"TensorRT failed to build an engine from {s.onnx_file} (see the log above)")
    seconds = time.monotonic() - t0
    write_text(sidecar(s.engine_file), s.info.to_json())  # first: an engine on disk always has its metadata
    write_bytes(s.engine_file, bytes(serialized))
    if s.timing_cache:
        write_bytes(s.timing_cache, bytes(config.get_timing_cache().serialize()))
    return {"build_seconds": round(seconds, 2), "tensorrt": trt.__version__,
            "engine_mb": round(s.engine_file.stat().st_size / 2**20, 2)}


def gen_trt_engine(spec: ExperimentSpec) -> dict:
    """The gen_trt_engine action: build the engine, then compare it with ONNX Runtime on real images."""
    s = settings(spec)
    out_dir = s.engine_file.parent
    status = StatusWriter(spec.action_dir("gen_trt_engine"))
    status.write("STARTED", f"Building a {s.precision} engine from {s.onnx_file}")
    try:
        require_tensorrt()
        compare_on = sample_images(spec, spec.export.parity_images, "gen_trt_engine's parity check")
        log.info("gen_trt_engine: %s -> %s (%s, batch %s..%s, workspace %d MiB)", s.onnx_file, s.engine_file,
                 s.precision, s.min_shape[0], s.max_shape[0], s.workspace_bytes >> 20)
        built = build(s)
        reference, engine = OnnxPredictor(s.onnx_file), TensorRTPredictor(s.engine_file, f"cuda:{s.gpu_id}")
        task = s.info.task
        parity = compare(lambda p: run_batch(reference, p, task), lambda p: run_batch(engine, p, task), compare_on,
                         s.info)
    except Exception as exc:
        status.write("FAILURE", f"{type(exc).__name__}: {exc}")
        raise
    report = {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items() if k != "info"},
              **built, **parity, "reference": "onnxruntime"}
    write_json(out_dir / (s.engine_file.name + ".report.json"), report)
    status.write("SUCCESS", f"Built {s.engine_file}", kpi={"agreement": parity["agreement"]})
    return report
