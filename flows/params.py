"""Typed flow parameters: the Prefect UI renders these as a form with defaults and bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Stages(BaseModel):
    """Which stages run after training and checkpoint selection."""

    model_config = ConfigDict(extra="forbid")

    evaluate: bool = True
    export: bool = True
    quantize: bool = True
    gen_trt_engine: bool = Field(True, description="Skipped with a clear line where TensorRT or CUDA is missing")
    inference: bool = Field(True, description="Overlays of the inference set (needs sources.inference or the spec)")
    registry: bool = Field(True, description="Register the model version in MLflow and move its aliases")


class Tracking(BaseModel):
    """Where MLflow records runs and models (defaults: SQLite and a folder inside results_dir)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(None, description="Default: MLFLOW_TRACKING_URI, else sqlite in results_dir")
    experiment: str = Field("oneformer", min_length=1)


TrtPrecision = Literal["fp32", "fp16", "int8"]
