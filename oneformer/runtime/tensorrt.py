"""The TensorRT backend: engines built by gen_trt_engine, run on an NVIDIA GPU (TensorRT 10's Python API).

Only what runs an engine lives here; the builder is the gen_trt_engine action. Both start from `require_tensorrt`,
which names what is missing when TensorRT or a CUDA device is not there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from oneformer.data.labelmap import LabelMap
from oneformer.errors import CheckpointError, ConversionError
from oneformer.runtime.predictor import ModelInfo, Outputs, check_task, outputs_from

INSTALL_HINT = ("install NVIDIA TensorRT 10 for your CUDA version (pip install 'tensorrt-cu12>=10,<11', or "
                "tensorrt-cu13 for CUDA 13) on a machine with an NVIDIA GPU")


def require_tensorrt() -> Any:
    """The tensorrt module, or a clear error naming what is missing."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ConversionError(f"TensorRT is not installed (no `tensorrt` Python package): {INSTALL_HINT}. ONNX "
                              f"Runtime can run the FP32 and INT8 ONNX files meanwhile") from exc
    if not torch.cuda.is_available():
        raise ConversionError(f"TensorRT {tensorrt.__version__} is installed but no CUDA device is visible: "
                              f"TensorRT builds and runs engines on an NVIDIA GPU")
    return tensorrt


def engine_device(device: str | None) -> str:
    """cuda:<index> for a device name: TensorRT deserializes onto the current device, which torch sets only from an
    indexed device (plain "cuda" or None is the current one)."""
    where = torch.device(device or "cuda")
    if where.type != "cuda":
        raise ConversionError(f"TensorRT engines run on a CUDA device, not {device!r}")
    return f"cuda:{torch.cuda.current_device() if where.index is None else where.index}"


def sidecar(engine: Path) -> Path:
    """Engines cannot carry ONNX metadata; it travels next to them."""
    return engine.with_name(engine.name + ".json")


class TensorRTPredictor:
    """TensorRT inference of an engine built by gen_trt_engine (input and outputs live on the GPU)."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        self.path = Path(path)
        self.device = device or "cuda"
        if not self.path.is_file():
            raise CheckpointError(f"TensorRT engine {self.path} does not exist")
        if not sidecar(self.path).is_file():
            raise CheckpointError(f"{sidecar(self.path)} is missing: build the engine with `oneformer gen_trt_engine`")
        self.info = ModelInfo.from_json(sidecar(self.path).read_text(), str(sidecar(self.path)))
        self.labels = LabelMap.from_list(self.info.label_map, self.info.contiguous_id, str(sidecar(self.path)))
        self.precision = self.info.precision
        trt = require_tensorrt()
        self.trt = trt
        self.device = engine_device(device)
        torch.cuda.set_device(torch.device(self.device))  # the engine deserializes onto the current device
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise CheckpointError(f"{self.path}: TensorRT could not load this engine (built by another version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        low, _, high = self.engine.get_tensor_profile_shape(self.inputs[0], 0)  # min, opt, max of the profile
        self.batch_range = (int(low[0]), int(high[0]))

    def __call__(self, pixels: torch.Tensor, task: str) -> Outputs:
        check_task(self.info, task, self.path)
        x = pixels.to(self.device, torch.float32).contiguous()
        self.context.set_input_shape(self.inputs[0], tuple(x.shape))
        self.context.set_tensor_address(self.inputs[0], x.data_ptr())
        results = []
        for name in self.outputs:
            dtype = torch.from_numpy(np.empty(0, self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ConversionError(f"TensorRT failed to run {self.path}")
        stream.synchronize()
        return outputs_from(self.outputs, [r.cpu().numpy() for r in results])
