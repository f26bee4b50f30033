"""The registered model's code, logged with it (MLflow models-from-code): images in, label maps and named segments
out, with the same pre- and post-processing as `oneformer inference`, on the version's ONNX files.

    model = mlflow.pyfunc.load_model("models:/<name>@champion")
    model.predict(["street.jpg", png_bytes])  # the fastest backend whose parity passed
    model.predict(["street.jpg"], params={"task": "semantic", "backend": "openvino", "precision": "int8"})

Params: `task` (default: the graph's), `backend` (auto, onnxruntime, openvino) and `precision` (auto, fp32, bf16,
int8). auto picks the fastest (file, backend) of the version's backends report (measured when it was registered:
each backend's latency and parity against ONNX Runtime; the INT8 file only where its quantize gate passed), among
those this machine runs (OpenVINO installed, bf16 on the CPU); an explicit choice is taken as asked.

Each result is a dict: `task`, `label_map` ([H, W] int32 class index, -1 where no class), `segment_map` ([H, W]
int32 segment id, 0 where none), `segments` (id, category name, category_id, isthing, score, area) and `model`:
which backend and file answered, e.g. `openvino-int8` (the INT8 file), `onnxruntime-fp32` or `openvino-bf16` (the
FP32 file), `torch-fp32` (the checkpoint: a task other than the one the ONNX graph was exported for).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.models
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

SERVE_BATCH = 4  # images per forward pass of a request (more: little faster on a CPU, more memory)


def images_of(model_input: Any) -> list[Any]:
    """The images in what pyfunc passes on: a DataFrame's first column, a dict's one list, a list, or one image."""
    if isinstance(model_input, pd.DataFrame):
        return list(model_input.iloc[:, 0])
    if isinstance(model_input, pd.Series):
        return list(model_input)
    if isinstance(model_input, dict):
        if len(model_input) != 1:
            raise ValueError(f"expected one column of images, got the keys {sorted(model_input)}")
        values = next(iter(model_input.values()))
        return list(values) if isinstance(values, list | tuple) else [values]
    if isinstance(model_input, np.ndarray) and np.issubdtype(model_input.dtype, np.number):
        return [model_input] if model_input.ndim in (2, 3) else list(model_input)  # one image, or a stack [N,H,W,3]
    if isinstance(model_input, list | tuple | np.ndarray):
        return list(model_input)
    return [model_input]


class SegmentationModel(PythonModel):
    """OneFormer segmentation on the version's ONNX files (the fastest passing backend), its checkpoint for other
    tasks."""

    def load_context(self, context: Any) -> None:
        """Read the serving settings and the backends report; predictors open on first use (a version without INT8
        still loads)."""
        self.files = {k: str(v) for k, v in context.artifacts.items()}
        self.config = json.loads(Path(self.files["config"]).read_text())
        self.report = json.loads(Path(self.files["backends"]).read_text()) if "backends" in self.files else None
        self.predictors: dict[tuple[str, str], Any] = {}

    def predictor(self, kind: str, backend: str, precision: str) -> Any:
        """The predictor of one file of the version (`fp32`, `int8` or `checkpoint`) on one backend."""
        if (kind, f"{backend}-{precision}") not in self.predictors:
            if kind not in self.files:
                raise ValueError(f"this model version has no {kind} file (its run skipped that stage); "
                                 f"predict with params={{'precision': 'fp32'}}")
            if kind == "checkpoint":
                from oneformer.runtime import open_predictor

                opened = open_predictor(self.files[kind])
            else:
                from oneformer.runtime.choice import Candidate, open_candidate

                opened = open_candidate(Path(self.files[kind]), Candidate(backend, precision), key="params precision")
            self.predictors[(kind, f"{backend}-{precision}")] = opened
        return self.predictors[(kind, f"{backend}-{precision}")]

    def choose(self, task: str, backend: str, precision: str) -> tuple[str, str, str]:
        """(file kind, backend, precision) that answers: the graph's task on an ONNX file, others on the checkpoint."""
        from oneformer.runtime.choice import SERVE_BACKENDS, SERVE_PRECISIONS, serving_choice

        if backend not in SERVE_BACKENDS:
            raise ValueError(f"params backend={backend!r}: one of {', '.join(SERVE_BACKENDS)}")
        if precision not in SERVE_PRECISIONS:
            raise ValueError(f"params precision={precision!r}: one of {', '.join(SERVE_PRECISIONS)}")
        if task == self.config["task"]:
            kind, candidate = serving_choice(self.report, {k for k in self.files if k in ("fp32", "int8")}, backend,
                                             precision)
            return kind, candidate.backend, candidate.precision
        if precision in ("int8", "bf16") or backend != "auto":
            raise ValueError(f"the ONNX files answer the {self.config['task']} task only; for {task} predict with "
                             f"params={{'task': '{task}'}} (backend and precision auto: the checkpoint answers every "
                             "task its network predicts, on torch at fp32)")
        return "checkpoint", "torch", "fp32"

    # model_input unannotated: MLflow reads a type hint there as the model's input schema, which the signature sets
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # noqa: ANN001
        """Segment each image for `params["task"]` on the backend and precision the params ask for (auto: fastest)."""
        from oneformer.runtime.predictor import describe
        from oneformer.runtime.segment import PREDICT_PARAMS, TASKS, Thresholds, segment_batch, to_rgb

        given = {**PREDICT_PARAMS, **{k: v for k, v in (params or {}).items() if v not in (None, "")}}
        task = given["task"] or self.config["task"]
        if task not in TASKS:
            raise ValueError(f"params task={task!r}: one of {', '.join(TASKS)}")
        predictor = self.predictor(*self.choose(task, str(given["backend"]), str(given["precision"])))
        name = describe(predictor)
        thresholds = Thresholds(**self.config["thresholds"])
        size = tuple(self.config["image_size"])
        pictures = [to_rgb(value, f"image {i}") for i, value in enumerate(images_of(model_input))]
        out = []
        for start in range(0, len(pictures), SERVE_BATCH):  # a request's images, a few per forward pass
            for result in segment_batch(predictor, pictures[start : start + SERVE_BATCH], task, size, thresholds):
                out.append({**result.to_dict(), "model": name})
        return out


mlflow.models.set_model(SegmentationModel())
