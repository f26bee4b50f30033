"""One predictor over PyTorch, ONNX Runtime, OpenVINO and TensorRT: the same preprocessing, outputs and
post-processing.

`predictor` holds the interface (ModelInfo, Outputs, prepare), `postprocess` turns outputs into semantic, instance
and panoptic results, and `torch`, `onnx`, `openvino` and `tensorrt` are the backends. `open_predictor` picks the
backend from the file and the `backend`/`precision` settings; for an ONNX file, "auto" is the fastest backend whose
parity passed on this machine (`choice`, measured once and kept in `<file>.backends.json`). Each backend's own
dependencies load only when a file of its kind is opened.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from oneformer.errors import ConversionError
from oneformer.runtime.predictor import Predictor, describe, onnx_info

if TYPE_CHECKING:
    from oneformer.spec import ExperimentSpec

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("auto", "fp32", "bf16", "int8")  # int8: the INT8 file's own (asking for it checks the file is one)


def open_predictor(path: str | Path, spec: ExperimentSpec | None = None, device: str | None = None,
                   backend: str = "auto", precision: str = "auto", images: list[Path] | None = None,
                   section: str | None = None) -> Predictor:
    """The predictor for a model file: a checkpoint runs on torch, an ONNX file on onnxruntime or openvino, an
    engine on tensorrt. `backend` auto picks the one the file's kind allows, for an ONNX file the fastest whose
    parity passed here (measured on `images`, synthetic scenes where none are given); `precision` auto is the
    file's own. `spec` builds the network of a checkpoint written elsewhere (TAO, Detectron2); `device` is where a
    checkpoint or engine runs (cuda:N from gpu_ids; ONNX files run on the CPU); `section` (inference, evaluate)
    names the settings in errors."""
    path = Path(path)
    keys = (f"{section}.backend", f"{section}.precision") if section else ("backend", "precision")
    for key, value, allowed in ((keys[0], backend, BACKENDS), (keys[1], precision, PRECISIONS)):
        if value not in allowed:
            raise ConversionError(f"{key}={value!r}: one of {', '.join(allowed)}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return open_onnx(path, backend, precision, images, keys)
    if suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise ConversionError(f"{keys[0]}={backend}: {path} is a TensorRT engine, which only TensorRT runs; set "
                                  f"{keys[0]} to tensorrt or auto, or give the ONNX file it was built from")
        from oneformer.runtime.tensorrt import TensorRTPredictor

        engine = TensorRTPredictor(path, device)
        if precision not in ("auto", engine.precision):
            raise ConversionError(f"{keys[1]}={precision}: {path} was built at {engine.precision} (an engine's "
                                  "precision is fixed when gen_trt_engine builds it: gen_trt_engine.tensorrt."
                                  f"data_type); set {keys[1]}=auto or build an engine at {precision}")
        return engine
    if backend not in ("auto", "torch"):
        raise ConversionError(f"{keys[0]}={backend}: {path} is a checkpoint, which runs on torch; for {backend}, "
                              + ("build an engine (`oneformer gen_trt_engine`) and give it as trt_engine"
                                 if backend == "tensorrt" else
                                 "export it (`oneformer export`) and give the ONNX file as the checkpoint")
                              + f", or set {keys[0]}=auto")
    if precision not in ("auto", "fp32"):
        raise ConversionError(f"{keys[1]}={precision}: checkpoints run at fp32; for {precision}, "
                              + ("quantize the ONNX export (`oneformer quantize`) and give the INT8 file"
                                 if precision == "int8" else "export ONNX (`oneformer export`) and run it with "
                                 "backend openvino on a CPU with bf16")
                              + f", or set {keys[1]}=auto")
    from oneformer.runtime.torch import TorchPredictor

    return TorchPredictor(path, device, spec)


def open_onnx(path: Path, backend: str, precision: str, images: list[Path] | None, keys: tuple[str, str]
              ) -> Predictor:
    """An ONNX file's predictor on ONNX Runtime or OpenVINO at a precision the file allows (see open_predictor)."""
    if backend in ("torch", "tensorrt"):
        raise ConversionError(f"{keys[0]}={backend}: {path} is an ONNX file, which runs on onnxruntime or openvino"
                              + ("; for TensorRT, build an engine from it (`oneformer gen_trt_engine`) and give it "
                                 "as trt_engine" if backend == "tensorrt" else "; give the checkpoint for torch")
                              + f", or set {keys[0]}=auto")
    info = onnx_info(path)
    if info.precision == "int8" and precision in ("fp32", "bf16"):
        raise ConversionError(f"{keys[1]}={precision}: {path} is an INT8 (QDQ) file, which runs at int8; for "
                              f"{precision} give the FP32 file it was quantized from"
                              f"{f' ({info.source})' if info.source else ''}, or set {keys[1]}=auto")
    if info.precision != "int8" and precision == "int8":
        raise ConversionError(f"{keys[1]}=int8: {path} is an {info.precision.upper()} file; give the INT8 file "
                              f"`oneformer quantize` writes from it, or set {keys[1]}=auto")
    if precision == "bf16":
        if backend == "onnxruntime":
            raise ConversionError(f"{keys[1]}=bf16: ONNX Runtime's CPU provider runs no bf16; set {keys[0]} to "
                                  f"openvino (or auto), or {keys[1]} to fp32")
        from oneformer.runtime.openvino import require_bf16, require_openvino

        require_openvino()
        require_bf16()
    if backend == "onnxruntime":
        from oneformer.runtime.onnx import OnnxPredictor

        return OnnxPredictor(path)
    from oneformer.runtime.choice import Candidate, choose, open_candidate

    if backend == "openvino":
        return open_candidate(path, Candidate("openvino", info.precision if precision == "auto" else precision),
                              key=keys[1])
    keep: dict[str, Predictor] = {}
    chosen = choose(path, precision, images, keep)
    predictor = keep.get(chosen.name) or open_candidate(path, chosen, key=keys[1])
    log.info("%s: %s answers (%s=auto: the fastest backend whose parity passed here)", path.name,
             describe(predictor), keys[0])
    return predictor
