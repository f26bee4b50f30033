"""oneformer-inference: predictions and overlays from a parent model on the inference images."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from flows.common import action_run
from flows.params import ActionInputs

PARENT = Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, or a path")


@flow(name="oneformer-inference")
def inference_flow(
    parent: Annotated[str, PARENT],
    model_kind: Annotated[Literal["checkpoint", "onnx", "int8"], Field(description="Which file of the parent")]
    = "checkpoint",
    inputs: ActionInputs = ActionInputs(),
) -> dict:
    """Predict every inference image; overlays and prediction files are logged to MLflow."""
    from tasks.actions import inference
    from tasks.parents import resolve_parent

    with action_run("inference", parent, inputs) as ctx:
        model = resolve_parent(parent, model_kind, ctx.uri, str(ctx.results / "parent"))
        result = inference(ctx.spec, model)
        ctx.client.log_artifacts(ctx.run, result["results_dir"], "inference")
        ctx.outputs.update(result)
    return result


if __name__ == "__main__":
    import sys

    print(inference_flow(parent=sys.argv[1], inputs=ActionInputs(spec=sys.argv[2] if len(sys.argv) > 2 else None)))
