"""The registered model's code, logged with it (MLflow models-from-code): images in, label maps and named segments
out, with the same pre- and post-processing as `oneformer inference`, on the version's FP32 or INT8 ONNX file.

    model = mlflow.pyfunc.load_model("models:/<name>@champion")
    model.predict(["street.jpg", png_bytes], params={"task": "semantic", "precision": "int8"})

Each result is a dict: `task`, `label_map` ([H, W] int32 class index, -1 where no class), `segment_map` ([H, W]
int32 segment id, 0 where none), `segments` (id, category name, category_id, isthing, score, area) and `model`
(which file answered). A task other than the one the ONNX graph was exported for runs on the version's checkpoint.
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
    """OneFormer segmentation on the version's ONNX files (FP32 or INT8), its checkpoint for other tasks."""

    def load_context(self, context: Any) -> None:
        """Read the serving settings; predictors open on first use (a version without INT8 still loads)."""
        self.files = {k: str(v) for k, v in context.artifacts.items()}
        self.config = json.loads(Path(self.files["config"]).read_text())
        self.predictors: dict[str, Any] = {}

    def predictor(self, kind: str) -> Any:
        """The predictor of one file of the version: `fp32`, `int8` or `checkpoint`."""
        if kind not in self.predictors:
            if kind not in self.files:
                raise ValueError(f"this model version has no {kind} file (its run skipped that stage); "
                                 f"predict with params={{'precision': 'fp32'}}")
            from oneformer.runtime import open_predictor

            self.predictors[kind] = open_predictor(self.files[kind])
        return self.predictors[kind]

    # model_input unannotated: MLflow reads a type hint there as the model's input schema, which the signature sets
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # noqa: ANN001
        """Segment each image for `params["task"]` on the `params["precision"]` ONNX file."""
        from oneformer.runtime.segment import PRECISIONS, PREDICT_PARAMS, TASKS, Thresholds, segment_batch, to_rgb

        given = {**PREDICT_PARAMS, **{k: v for k, v in (params or {}).items() if v not in (None, "")}}
        task, precision = given["task"] or self.config["task"], given["precision"]
        if task not in TASKS:
            raise ValueError(f"params task={task!r}: one of {', '.join(TASKS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"params precision={precision!r}: one of {', '.join(PRECISIONS)}")
        if task == self.config["task"]:
            kind, name = precision, f"onnx-{precision}"
        elif precision == "int8":
            raise ValueError(f"the INT8 file answers the {self.config['task']} task only; for {task} predict with "
                             f"params={{'task': '{task}', 'precision': 'fp32'}} (the checkpoint answers every task "
                             "its network predicts)")
        else:
            kind, name = "checkpoint", "checkpoint-fp32"
        predictor = self.predictor(kind)
        thresholds = Thresholds(**self.config["thresholds"])
        size = tuple(self.config["image_size"])
        pictures = [to_rgb(value, f"image {i}") for i, value in enumerate(images_of(model_input))]
        out = []
        for start in range(0, len(pictures), SERVE_BATCH):  # a request's images, a few per forward pass
            for result in segment_batch(predictor, pictures[start : start + SERVE_BATCH], task, size, thresholds):
                out.append({**result.to_dict(), "model": name})
        return out


mlflow.models.set_model(SegmentationModel())
