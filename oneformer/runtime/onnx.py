"""The ONNX Runtime backend: FP32 or INT8 QDQ files written by the export and quantize actions, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from oneformer.data.labelmap import LabelMap
from oneformer.errors import CheckpointError
from oneformer.runtime.devices import cpu_threads
from oneformer.runtime.predictor import META_KEY, ModelInfo, Outputs, check_task, outputs_from


class OnnxPredictor:
    """ONNX Runtime inference (FP32 or INT8 QDQ) of a file written by `oneformer export` / `quantize`."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX file {self.path} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # QDQ -> QLinear/IntegerToFloat
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are its own pybind types
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{self.path} is not an ONNX model ONNX Runtime can load ({detail}); give a file "
                                  "written by `oneformer export` or `oneformer quantize`") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in meta:
            raise CheckpointError(f"{self.path} has no oneformer metadata: export it with `oneformer export`")
        self.info = ModelInfo.from_json(meta[META_KEY], str(self.path))
        self.precision = self.info.precision  # the file's own: ONNX Runtime's CPU provider runs it as written
        self.labels = LabelMap.from_list(self.info.label_map, self.info.contiguous_id, f"{self.path} metadata")
        self.input = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]  # an int when exported with a fixed export.batch_size
        self.batch_range = (batch, batch) if isinstance(batch, int) and batch > 0 else (1, None)
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, pixels: torch.Tensor, task: str) -> Outputs:
        check_task(self.info, task, self.path)
        return outputs_from(self.names, self.session.run(None, {self.input: pixels.numpy().astype(np.float32)}))
