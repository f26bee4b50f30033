"""Where an ONNX graph spends its time, per op type (ONNX Runtime's profiler), and what that says about INT8's
ceiling: the float work left in an INT8 graph bounds its speed-up whatever the integer kernels do."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def op_profile(onnx_file: str, pixels: np.ndarray, runs: int = 2, threads: int = 2) -> dict[str, float]:
    """Milliseconds per run spent in each op type, largest first (the first run warms up and is not counted)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort-profile-")) / "ort")
    session = ort.InferenceSession(onnx_file, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(runs + 1):
        session.run(None, {name: pixels})
    trace_file = Path(session.end_profiling())
    trace = json.loads(trace_file.read_text())
    shutil.rmtree(trace_file.parent, ignore_errors=True)  # the profile's own folder
    counted = [e for e in trace if e.get("name") == "model_run"][1:]
    start = counted[0]["ts"] if counted else 0
    totals: dict[str, float] = {}
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1000 / max(len(counted), 1)
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def is_integer_op(op: str) -> bool:
    """An op that computes in INT8 (ONNX Runtime's fused QDQ kernels)."""
    return op.startswith("QLinear") or "Integer" in op or op.startswith("DynamicQuantize")


def int8_ceiling(fp32: dict[str, float], int8: dict[str, float], goal: float = 2.0) -> dict:
    """The INT8 graph's time split into integer kernels, Q/DQ and float ops, with the speed-up bound that follows.

    The float ops of the INT8 graph run the same kernels as in FP32, so FP32's time minus them is what the
    quantized ops cost in float; divided by the integer kernels' time, that is the integer kernels' own speed-up.
    `bound_if_integer_ops_free` is FP32's total over the INT8 graph's float + Q/DQ time: no INT8 kernel, however
    fast, beats it; the goal is reachable only if that bound exceeds it.
    """
    fp32_total, int8_total = sum(fp32.values()), sum(int8.values())
    integer = sum(v for k, v in int8.items() if is_integer_op(k))
    qdq = sum(v for k, v in int8.items() if k in QDQ_OPS)
    floats = {k: v for k, v in int8.items() if not is_integer_op(k) and k not in QDQ_OPS}
    float_ms = sum(floats.values())
    quantized_in_fp32 = max(fp32_total - float_ms, 0.0)
    bound = fp32_total / max(float_ms + qdq, 1e-9)
    return {
        "fp32_total_ms": round(fp32_total, 1), "int8_total_ms": round(int8_total, 1),
        "int8_integer_kernels_ms": round(integer, 1), "int8_qdq_ms": round(qdq, 1),
        "int8_float_ops_ms": round(float_ms, 1),
        "integer_kernel_speedup": round(quantized_in_fp32 / max(integer, 1e-9), 2),
        "bound_if_integer_ops_free": round(bound, 2),
        "integer_ms_allowed_for_goal": round(max(fp32_total / goal - float_ms - qdq, 0.0), 1),
        "float_ops_left": {k: v for k, v in list(floats.items())[:12]},
        "goal": goal, "reachable": bound > goal,
    }


def cpu_flags() -> list[str]:
    """The CPU's SIMD features that decide INT8 and BF16 speed (AVX2, AVX-512, VNNI, BF16, AMX)."""
    wanted = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8"}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(wanted & set(flags))


def int8_coverage(onnx_file: str) -> dict[str, dict[str, int]]:
    """Per network part, how many Conv/MatMul/Gemm run in INT8 (both inputs dequantized) and how many stay float
    (in our graphs: the activation x activation products of attention, which quantize_onnx excludes)."""
    import onnx

    model = onnx.load(onnx_file, load_external_data=False)
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    counts: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Conv", "Gemm"):
            continue
        part = "/".join(node.name.strip("/").split("/")[2:4]) or node.name
        kind = "int8" if all(producer.get(i) == "DequantizeLinear" for i in node.input[:2]) else "float"
        row = counts.setdefault(part, {"int8": 0, "float": 0})
        row[kind] += 1
    return dict(sorted(counts.items()))
