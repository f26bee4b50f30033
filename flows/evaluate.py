"""oneformer-evaluate: metrics of a parent model (checkpoint, ONNX or INT8 ONNX) on the eval data."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from flows.common import action_run
from flows.params import ActionInputs

PARENT = Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, or a path")


@flow(name="oneformer-evaluate")
def evaluate_flow(
    parent: Annotated[str, PARENT],
    model_kind: Annotated[Literal["checkpoint", "onnx", "int8"], Field(description="Which file of the parent")]
    = "checkpoint",
    inputs: ActionInputs = ActionInputs(),
) -> dict:
    """Evaluate the parent's model; metrics go to Prefect and to a new MLflow run tagged with the parent."""
    from tasks.actions import evaluate
    from tasks.parents import resolve_parent

    with action_run("evaluate", parent, inputs) as ctx:
        model = resolve_parent(parent, model_kind, ctx.uri, str(ctx.results / "parent"))
        metrics = evaluate(ctx.spec, model)
        out = ctx.spec.action_dir("evaluate")
        ctx.client.log_artifacts(ctx.run, str(out), "evaluate")
        ctx.outputs.update({**{k: v for k, v in metrics.items() if isinstance(v, float)}, "model": model})
    return metrics


if __name__ == "__main__":
    import sys

    print(evaluate_flow(parent=sys.argv[1], inputs=ActionInputs(spec=sys.argv[2] if len(sys.argv) > 2 else None)))
