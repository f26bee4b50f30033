"""One predictor over PyTorch, ONNX Runtime and TensorRT: the same preprocessing, outputs and post-processing.

`predictor` holds the interface (ModelInfo, Outputs, prepare), `postprocess` turns outputs into semantic, instance
and panoptic results, and `torch`, `onnx` and `tensorrt` are the backends. `open_predictor` picks the backend
from the file; each backend's own dependencies load only when a file of its kind is opened.
"""

from __future__ import annotations

from pathlib import Path

from oneformer.runtime.predictor import Predictor

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def open_predictor(path: str | Path) -> Predictor:
    """The predictor for a model file, chosen by its kind: checkpoint, ONNX file or TensorRT engine."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        from oneformer.runtime.onnx import OnnxPredictor

        return OnnxPredictor(path)
    if suffix in ENGINE_SUFFIXES:
        from oneformer.runtime.tensorrt import TensorRTPredictor

        return TensorRTPredictor(path)
    from oneformer.runtime.torch import TorchPredictor

    return TorchPredictor(path)
