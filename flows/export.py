"""oneformer-export: the parent's checkpoint as ONNX with its parity report."""

from __future__ import annotations

from prefect import flow

from flows.common import action_run, on_failure, run_from_argv, run_name
from flows.params import ActionInputs, Parent, flat_inputs


@flow(name="oneformer-export", flow_run_name=run_name("export"), on_failure=[on_failure],
      on_crashed=[on_failure])
@flat_inputs
def export_flow(parent: Parent, *, inputs: ActionInputs) -> dict:
    """Export; the ONNX file and its report are logged to MLflow."""
    from tasks.actions import export

    with action_run("export", parent, inputs) as r:
        checkpoint = r.parent_file(parent, "checkpoint")
        onnx_file = r.spec.export.onnx_file or str(r.spec.action_dir("export") / "model.onnx")
        report = export(r.spec, checkpoint, onnx_file)
        r.log_files([onnx_file, onnx_file + ".report.json"], "export")
        r.outputs.update({"onnx_file": onnx_file, "agreement": report["agreement"]})
    return {**report, "onnx_file": onnx_file}


if __name__ == "__main__":
    run_from_argv(export_flow)
