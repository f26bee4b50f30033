"""oneformer-quantize: INT8 QDQ ONNX from the parent's ONNX file (or its checkpoint, exported first)."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from flows.common import action_run, on_failure, run_from_argv, run_name
from flows.params import ActionInputs, Parent, flat_inputs

Source = Annotated[Literal["checkpoint", "onnx"], Field(description="Quantize the parent's ONNX file, or export "
                                                                     "its checkpoint first")]


@flow(name="oneformer-quantize", flow_run_name=run_name("quantize"), on_failure=[on_failure],
      on_crashed=[on_failure])
@flat_inputs
def quantize_flow(parent: Parent, model_kind: Source = "onnx", *, inputs: ActionInputs) -> dict:
    """Quantize; the INT8 file and its report (agreement, mIoU FP32 vs INT8) are logged to MLflow."""
    from tasks.actions import quantize

    with action_run("quantize", parent, inputs) as r:
        source = r.parent_file(parent, model_kind)
        int8 = r.spec.quantize.onnx_file or str(r.spec.action_dir("quantize") / "model.int8.onnx")
        report = quantize(r.spec, source, int8)
        r.log_files([int8, int8 + ".report.json"], "quantize")
        r.outputs.update({"onnx_file": int8, "agreement": report["agreement"],
                          "mIoU_fp32": report["mIoU"]["fp32"] or 0.0, "mIoU_int8": report["mIoU"]["int8"] or 0.0})
    return report


if __name__ == "__main__":
    run_from_argv(quantize_flow)
