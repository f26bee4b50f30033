"""Typed flow parameters: the Prefect UI renders these as a form with defaults and bounds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.sources import DataSources


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
# The parameters every action flow shares: which model it starts from, and which file of it.
Parent = Annotated[str, Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, "
                                          "or a path")]
ModelKind = Annotated[Literal["checkpoint", "onnx", "int8"], Field(description="Which file of the parent")]


class ActionInputs(BaseModel):
    """What every action flow reads besides its parent: the spec, the data, where results and runs go."""

    model_config = ConfigDict(extra="forbid")

    spec: str | None = Field(None, description="Experiment spec YAML (TAO keys); embedded defaults when empty")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted spec keys, e.g. evaluate.batch_size")
    sources: DataSources = Field(default_factory=DataSources, description="Dataset URIs in TAO's bucket layout")
    results_dir: str | None = Field(None, description="Default: the spec's results_dir")
    tracking_config: Tracking = Field(default_factory=Tracking)
    s3_secret_block: str | None = Field(None, description="Prefect Secret block with S3 settings (JSON)")
