"""The gen_trt_engine action: a TensorRT engine from an exported (or INT8 QDQ) ONNX file, checked on real images.

Written to NVIDIA's documented TensorRT 10 Python API. Everything that decides *what* to build (precision,
shapes, workspace, names, the QDQ check) is plain Python and runs anywhere; only `build` and the TensorRT
predictor (oneformer.runtime.tensorrt) touch TensorRT, and both start by checking that TensorRT and a CUDA
device are present.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnx
import torch

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


def onnx_input(model: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """The graph's image input and its shape (None for a dynamic axis)."""
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def is_qdq(model: onnx.ModelProto) -> bool:
    """Explicitly quantized (what `oneformer quantize` writes): TensorRT takes its INT8 scales from the graph."""
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


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
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(s.onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT could not parse {s.onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s.workspace_bytes)
    if s.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if s.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes
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
