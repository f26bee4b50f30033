"""oneformer-evaluate: metrics of a parent model (checkpoint, ONNX or INT8 ONNX) on the eval data."""

from __future__ import annotations

from prefect import flow

from flows.common import action_run, on_failure, run_from_argv, run_name
from flows.params import ActionInputs, ModelKind, Parent, flat_inputs


@flow(name="oneformer-evaluate", flow_run_name=run_name("evaluate"), on_failure=[on_failure],
      on_crashed=[on_failure])
@flat_inputs
def evaluate_flow(parent: Parent, model_kind: ModelKind = "checkpoint", *, inputs: ActionInputs) -> dict:
    """Evaluate the parent's model; metrics go to Prefect and to a new MLflow run tagged with the parent."""
    from tasks.actions import evaluate

    with action_run("evaluate", parent, inputs) as r:
        model = r.parent_file(parent, model_kind)
        metrics = evaluate(r.spec, model)
        r.client.log_artifacts(r.run, str(r.spec.action_dir("evaluate")), "evaluate")
        r.outputs.update({**{k: v for k, v in metrics.items() if isinstance(v, float)}, "model": model})
    return metrics


if __name__ == "__main__":
    run_from_argv(evaluate_flow)
