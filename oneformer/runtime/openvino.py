"""The OpenVINO backend: our FP32 ONNX files at fp32 or bf16, and our INT8 QDQ files at int8, on the CPU.

OpenVINO reads the ONNX files directly (no IR conversion step). Its CPU plugin runs float graphs in bf16 by default
on CPUs that have bf16 instructions, so every compile sets INFERENCE_PRECISION_HINT explicitly: fp32 means f32.
`require_openvino` and `require_bf16` name what is missing when the package or the CPU feature is not there.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oneformer.data.labelmap import LabelMap
from oneformer.errors import CheckpointError, ConversionError
from oneformer.runtime.devices import cpu_threads
from oneformer.runtime.predictor import Outputs, check_task, onnx_info, outputs_from

INSTALL = "pip install 'oneformer-pipeline[openvino]' (or pip install openvino)"
PRECISIONS = ("fp32", "bf16", "int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the CPU features OpenVINO's CPU plugin runs bf16 with


def require_openvino() -> Any:
    """The openvino module, or a clear error naming the package, its install command and the alternative."""
    try:
        import openvino
    except ImportError as exc:
        raise ConversionError(f"OpenVINO is not installed (no `openvino` Python package): {INSTALL}. Meanwhile "
                              "ONNX Runtime runs the same ONNX files: set backend=onnxruntime (inference.backend / "
                              "evaluate.backend, the served model's backend param), or leave it at auto") from exc
    return openvino


@functools.cache
def core() -> Any:
    """One OpenVINO Core per process: it holds the plugins, which load once."""
    return require_openvino().Core()


@functools.cache
def cpu_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin can run on this CPU (FP32, INT8, BF16, FP16, ...)."""
    return tuple(str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def has_bf16() -> bool:
    """Whether this CPU runs bf16 in OpenVINO (a compile with a bf16 hint succeeds anyway, silently in f32)."""
    return "BF16" in cpu_capabilities()


def require_bf16() -> None:
    """Nothing where the CPU runs bf16, else an error naming the missing CPU feature and the alternatives."""
    if not has_bf16():
        raise ConversionError(f"bf16 needs a CPU with {' or '.join(BF16_FLAGS)} (AVX-512 BF16 or AMX), which this "
                              f"CPU ({cpu_name()}) lacks: OpenVINO reports {', '.join(cpu_capabilities())} only. "
                              "Use precision fp32 (OpenVINO or ONNX Runtime), the INT8 file, or auto (the fastest "
                              "precision this CPU runs)")


def cpu_name() -> str:
    """The CPU's name as OpenVINO reads it, for messages and reports."""
    try:
        return str(core().get_property("CPU", "FULL_DEVICE_NAME"))
    except RuntimeError:
        return "this CPU"


def element_type(precision: str) -> Any:
    """The INFERENCE_PRECISION_HINT for a precision: the float parts of an INT8 graph run in f32 too."""
    types = require_openvino().Type
    return types.bf16 if precision == "bf16" else types.f32


class OpenVinoPredictor:
    """OpenVINO CPU inference of a file written by `oneformer export` (fp32, bf16) or `quantize` (int8)."""

    backend = "openvino"

    def __init__(self, path: str | Path, precision: str = "auto", threads: int = 0, key: str = "precision") -> None:
        """`precision` auto is the file's own (fp32 or int8); `threads` 0 lets OpenVINO pick (its cores); `key` is the
        setting that asked for the precision, for errors."""
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX file {self.path} does not exist")
        self.info = onnx_info(self.path)
        self.labels = LabelMap.from_list(self.info.label_map, self.info.contiguous_id, f"{self.path} metadata")
        self.precision = self.check_precision(precision, key)
        ov = require_openvino()
        if self.precision == "bf16":
            require_bf16()
        try:
            model = core().read_model(str(self.path))
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self.path}: OpenVINO {ov.get_version()} cannot read this ONNX file ({detail}); "
                                  "run it with backend=onnxruntime") from None
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[Any, Any] = {hints.inference_precision: element_type(self.precision),
                                  hints.performance_mode: hints.PerformanceMode.LATENCY}
        config[props.inference_num_threads] = max(cpu_threads(threads), 0)  # explicit: 0 is OpenVINO's own
        self.compiled = core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one request: a served model's concurrent predict calls take turns on it
        batch = model.inputs[0].get_partial_shape()[0]  # a static dimension where export.batch_size fixed it
        self.batch_range = (batch.get_length(),) * 2 if batch.is_static else (1, None)
        self.names = [o.get_any_name() for o in self.compiled.outputs]

    def check_precision(self, precision: str, key: str) -> str:
        """The precision this file runs at: INT8 files at int8 only, FP32 files at fp32 or bf16."""
        own = self.info.precision
        if precision == "auto":
            return own
        if precision not in PRECISIONS:
            raise ConversionError(f"{key}={precision!r}: OpenVINO runs {', '.join(PRECISIONS)} (or auto)")
        if own == "int8" and precision != "int8":
            raise ConversionError(f"{key}={precision}: {self.path} is an INT8 (QDQ) file, which runs at int8; for "
                                  f"{precision}, open the FP32 file it was quantized from"
                                  f"{f' ({self.info.source})' if self.info.source else ''}, or set {key}=auto")
        if own != "int8" and precision == "int8":
            raise ConversionError(f"{key}=int8: {self.path} is an {own.upper()} file; quantize it with "
                                  "`oneformer quantize` and open the INT8 file it writes, or set "
                                  f"{key}=auto")
        return precision

    def __call__(self, pixels: torch.Tensor, task: str) -> Outputs:
        check_task(self.info, task, self.path)
        with self.lock:
            result = self.request.infer({0: np.ascontiguousarray(pixels.numpy(), dtype=np.float32)})
            # copies: the request reuses its output buffers on the next call
            arrays = [np.array(result[o]) for o in self.compiled.outputs]
        return outputs_from(self.names, arrays)
