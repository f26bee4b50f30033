"""oneformer-inference: predictions and overlays from a parent model on the inference images."""

from __future__ import annotations

from prefect import flow

from flows.common import action_run, on_failure, run_from_argv, run_name
from flows.params import ActionInputs, ModelKind, Parent, flat_inputs


@flow(name="oneformer-inference", flow_run_name=run_name("inference"), on_failure=[on_failure],
      on_crashed=[on_failure])
@flat_inputs
def inference_flow(parent: Parent, model_kind: ModelKind = "checkpoint", *, inputs: ActionInputs) -> dict:
    """Predict every inference image; overlays and prediction files are logged to MLflow."""
    from tasks.actions import inference

    with action_run("inference", parent, inputs) as r:
        model = r.parent_file(parent, model_kind)
        result = inference(r.spec, model)
        r.client.log_artifacts(r.run, result["results_dir"], "inference")
        r.outputs.update(result)
    return result


if __name__ == "__main__":
    run_from_argv(inference_flow)
