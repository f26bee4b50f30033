"""oneformer-train: one training run (optionally initialized from a parent model), tracked in MLflow."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from flows.common import action_run
from flows.params import Tracking
from tasks.sources import DataSources

PARENT = Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, or a path")


@flow(name="oneformer-train")
def train_flow(
    parent: Annotated[str | None, Field(description="Optional: initialize from this model (MLflow run id, "
                                                     "models:/ URI or path)")] = None,
    spec: Annotated[str | None, Field(description="Experiment spec YAML (TAO keys)")] = None,
    overrides: Annotated[dict[str, Any], Field(description="Dotted spec keys")] = {},  # noqa: B006
    sources: DataSources = DataSources(),
    results_dir: str | None = None,
    tracking_config: Tracking = Tracking(),
    s3_secret_block: str | None = None,
) -> dict:
    """Train with the spec's values; per-epoch metrics and the best checkpoint go to MLflow."""
    from tasks.parents import resolve_parent
    from tasks.training import train_once

    with action_run("train", parent, spec, overrides, sources, results_dir, tracking_config,
                    s3_secret_block) as ctx:
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

    print(train_flow(spec=sys.argv[1] if len(sys.argv) > 1 else None))
