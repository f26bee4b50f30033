"""oneformer-export: the parent's checkpoint as ONNX with its parity report."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from flows.common import action_run
from flows.params import ActionInputs

PARENT = Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, or a path")


@flow(name="oneformer-export")
def export_flow(
    parent: Annotated[str, PARENT],
    inputs: ActionInputs = ActionInputs(),
) -> dict:
    """Export; the ONNX file and its report are logged to MLflow."""
    from tasks.actions import export
    from tasks.parents import resolve_parent

    with action_run("export", parent, inputs) as ctx:
        checkpoint = resolve_parent(parent, "checkpoint", ctx.uri, str(ctx.results / "parent"))
        onnx_file = ctx.spec.export.onnx_file or str(ctx.spec.action_dir("export") / "model.onnx")
        report = export(ctx.spec, checkpoint, onnx_file)
        for f in (onnx_file, onnx_file + ".report.json"):
            ctx.client.log_artifact(ctx.run, f, "export")
        ctx.outputs.update({"onnx_file": onnx_file, "agreement": report["agreement"]})
    return {**report, "onnx_file": onnx_file}


if __name__ == "__main__":
    import sys

    print(export_flow(parent=sys.argv[1], inputs=ActionInputs(spec=sys.argv[2] if len(sys.argv) > 2 else None)))
