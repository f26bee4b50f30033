"""oneformer-train: one training run (optionally initialized from a parent model), tracked in MLflow."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from flows.common import action_run
from flows.params import ActionInputs

PARENT = Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, or a path")


@flow(name="oneformer-train")
def train_flow(
    parent: Annotated[str | None, Field(description="Optional: initialize from this model (MLflow run id, "
                                                     "models:/ URI or path)")] = None,
    inputs: ActionInputs = ActionInputs(),
) -> dict:
    """Train with the spec's values; per-epoch metrics and the best checkpoint go to MLflow."""
    from tasks.parents import resolve_parent
    from tasks.training import train_once

    with action_run("train", parent, inputs) as ctx:
        run_spec = ctx.spec
        if parent:
            from tasks.actions import with_values

            run_spec = with_values(ctx.spec, {"train.pretrained_model": resolve_parent(
                parent, "checkpoint", ctx.uri, str(ctx.results / "parent"))})
        result = train_once(run_spec, ctx.uri, ctx.run)
        if result["best"]:
            ctx.client.log_artifact(ctx.run, result["best"]["path"], "checkpoint")
        ctx.outputs.update({"best_val_mIoU": result["mIoU"] or 0.0, "epochs": result["epochs"],
                            "checkpoint": result["best"]["path"] if result["best"] else ""})
    return result


if __name__ == "__main__":
    import sys

    print(train_flow(inputs=ActionInputs(spec=sys.argv[1] if len(sys.argv) > 1 else None)))
