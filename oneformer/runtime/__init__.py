"""One predictor over PyTorch, ONNX Runtime and TensorRT: the same preprocessing, outputs and post-processing.

`predictor` holds the interface (ModelInfo, Outputs, prepare), `postprocess` turns outputs into semantic, instance
and panoptic results, and `torch`, `onnx` and `tensorrt` are the backends. `open_predictor` picks the backend
from the file; each backend's own dependencies load only when a file of its kind is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from oneformer.runtime.predictor import Predictor

if TYPE_CHECKING:
    from oneformer.spec import ExperimentSpec

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def open_predictor(path: str | Path, spec: ExperimentSpec | None = None, device: str | None = None) -> Predictor:
    """The predictor for a model file, chosen by its kind: checkpoint, ONNX file or TensorRT engine. `spec` builds
    the network of a checkpoint written elsewhere (TAO, Detectron2), which carries no config of its own; `device`
    is where a checkpoint or engine runs (cuda:N from gpu_ids; ONNX files run on the CPU)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        from oneformer.runtime.onnx import OnnxPredictor

        return OnnxPredictor(path)
    if suffix in ENGINE_SUFFIXES:
        from oneformer.runtime.tensorrt import TensorRTPredictor

        return TensorRTPredictor(path, device)
    from oneformer.runtime.torch import TorchPredictor

    return TorchPredictor(path, device, spec)
