"""oneformer-gen-trt-engine: a TensorRT engine from the parent's ONNX (fp32/fp16) or INT8 ONNX (int8)."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from flows.common import action_run
from flows.params import ActionInputs

PARENT = Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, or a path")


@flow(name="oneformer-gen-trt-engine")
def gen_trt_engine_flow(
    parent: Annotated[str, PARENT],
    precision: Literal["fp32", "fp16", "int8"] = "fp16",
    inputs: ActionInputs = ActionInputs(),
) -> dict:
    """Build the engine where TensorRT and CUDA are present; otherwise finish with the reason it was skipped."""
    from tasks.actions import gen_trt_engine
    from tasks.parents import resolve_parent

    with action_run("gen_trt_engine", parent, inputs) as ctx:
        onnx_file = resolve_parent(parent, "int8" if precision == "int8" else "onnx", ctx.uri,
                                   str(ctx.results / "parent"))
        report = gen_trt_engine(ctx.spec, onnx_file, precision)
        if "skipped" not in report:
            for f in (report["engine_file"], report["engine_file"] + ".report.json"):
                ctx.client.log_artifact(ctx.run, f, "tensorrt")
        ctx.outputs.update({k: v for k, v in report.items() if isinstance(v, int | float | str)})
    return report


if __name__ == "__main__":
    import sys

    print(gen_trt_engine_flow(parent=sys.argv[1], inputs=ActionInputs(spec=sys.argv[2] if len(sys.argv) > 2 else None)))
