"""oneformer-gen-trt-engine: a TensorRT engine from the parent's ONNX (fp32/fp16) or INT8 ONNX (int8)."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from flows.common import action_run, on_failure, run_from_argv, run_name
from flows.params import ActionInputs, Parent, TrtPrecision, flat_inputs

Precision = Annotated[TrtPrecision, Field(description="fp32/fp16 build from the parent's ONNX file, int8 from its INT8 "
                                                      "ONNX file")]


@flow(name="oneformer-gen-trt-engine", flow_run_name=run_name("gen_trt_engine"), on_failure=[on_failure],
      on_crashed=[on_failure])
@flat_inputs
def gen_trt_engine_flow(parent: Parent, precision: Precision = "fp16", *, inputs: ActionInputs) -> dict:
    """Build the engine where TensorRT and CUDA are present; otherwise finish with the reason it was skipped."""
    from tasks.actions import gen_trt_engine

    with action_run("gen_trt_engine", parent, inputs) as r:
        onnx_file = r.parent_file(parent, "int8" if precision == "int8" else "onnx")
        report = gen_trt_engine(r.spec, onnx_file, precision)
        if "skipped" not in report:
            r.log_files([report["engine_file"], report["engine_file"] + ".report.json"], "tensorrt")
        r.outputs.update({k: v for k, v in report.items() if isinstance(v, int | float | str)})
    return report


if __name__ == "__main__":
    run_from_argv(gen_trt_engine_flow)
