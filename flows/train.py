"""oneformer-train: one training run (optionally initialized from a parent model), tracked in MLflow."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from flows.common import action_run, on_failure, run_from_argv, run_name
from flows.params import ActionInputs, flat_inputs

InitFrom = Annotated[str | None, Field(description="Optional: initialize from this model (MLflow run id, models:/ "
                                                   "URI or path)")]


@flow(name="oneformer-train", flow_run_name=run_name("train"), on_failure=[on_failure],
      on_crashed=[on_failure])
@flat_inputs
def train_flow(parent: InitFrom = None, *, inputs: ActionInputs) -> dict:
    """Train with the spec's values; per-epoch metrics and the best checkpoint go to MLflow."""
    from oneformer.spec import with_values
    from tasks.training import train_once

    with action_run("train", parent, inputs) as r:
        spec = r.spec
        if parent:
            init = r.parent_file(parent, "checkpoint")
            spec = with_values(spec, {"train.pretrained_model": init})
        result = train_once(spec, r.uri, r.run)
        if result["best"]:
            r.log_files([result["best"]["path"]], "checkpoint")
        r.outputs.update({"best_val_mIoU": result["mIoU"] or 0.0, "epochs": result["epochs"],
                          "checkpoint": result["best"]["path"] if result["best"] else ""})
    return result


if __name__ == "__main__":
    run_from_argv(train_flow, with_parent=False)
