"""oneformer-quantize: INT8 QDQ ONNX from the parent's ONNX file (or its checkpoint, exported first)."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from flows.common import action_run
from flows.params import ActionInputs

PARENT = Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, or a path")


@flow(name="oneformer-quantize")
def quantize_flow(
    parent: Annotated[str, PARENT],
    model_kind: Annotated[Literal["checkpoint", "onnx"], Field(description="Quantize the parent's ONNX file, "
                                                                           "or export its checkpoint first")]
    = "onnx",
    inputs: ActionInputs = ActionInputs(),
) -> dict:
    """Quantize; the INT8 file and its report (agreement, mIoU FP32 vs INT8) are logged to MLflow."""
    from tasks.actions import quantize
    from tasks.parents import resolve_parent

    with action_run("quantize", parent, inputs) as ctx:
        source = resolve_parent(parent, model_kind, ctx.uri, str(ctx.results / "parent"))
        int8 = ctx.spec.quantize.onnx_file or str(ctx.spec.action_dir("quantize") / "model.int8.onnx")
        report = quantize(ctx.spec, source, int8)
        for f in (int8, int8 + ".report.json"):
            ctx.client.log_artifact(ctx.run, f, "quantize")
        ctx.outputs.update({"onnx_file": int8, "agreement": report["agreement"],
                            "mIoU_fp32": report["mIoU"]["fp32"] or 0.0, "mIoU_int8": report["mIoU"]["int8"] or 0.0})
    return report


if __name__ == "__main__":
    import sys

    print(quantize_flow(parent=sys.argv[1], inputs=ActionInputs(spec=sys.argv[2] if len(sys.argv) > 2 else None)))
