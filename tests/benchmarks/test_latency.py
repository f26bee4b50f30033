"""The latency benchmark: every backend measured or skipped with its reason, and the INT8 ceiling's arithmetic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    """A benchmark script as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_int8_ceiling_is_what_the_float_ops_left_allow() -> None:
    ops = load("op_profile")
    fp32 = {"MatMul": 1000.0, "Conv": 200.0, "GridSample": 250.0, "Add": 150.0}
    int8 = {"MatMulIntegerToFloat": 600.0, "QLinearConv": 100.0, "GridSample": 250.0, "Add": 150.0,
            "QuantizeLinear": 30.0, "DequantizeLinear": 20.0}
    c = ops.int8_ceiling(fp32, int8, goal=2.0)
    assert c["int8_float_ops_ms"] == 400.0 and c["int8_qdq_ms"] == 50.0 and c["int8_integer_kernels_ms"] == 700.0
    assert c["integer_kernel_speedup"] == round(1200 / 700, 2)  # FP32 1600 minus the 400 ms of float ops
    assert c["bound_if_integer_ops_free"] == round(1600 / 450, 2) and c["reachable"]
    assert c["integer_ms_allowed_for_goal"] == 350.0  # 1600 / 2 - 450
    assert list(c["float_ops_left"]) == ["GridSample", "Add"]
    heavy_float = {**int8, "GridSample": 700.0}
    assert not ops.int8_ceiling(fp32, heavy_float, goal=2.0)["reachable"]


@pytest.mark.slow
def test_the_benchmark_measures_every_backend_or_says_why_not(tmp_path: Path) -> None:
    import tempfile

    import torch

    latency = load("latency")
    out = tmp_path / "latency.json"

    def scratch() -> set[Path]:
        return {p for glob in ("ort-profile-*", "bench-latency-*") for p in Path(tempfile.gettempdir()).glob(glob)}

    threads, before = torch.get_num_threads(), scratch()
    result = latency.main(["--model", "smoke", "--size", "64", "--batches", "1,2", "--runs", "2", "--calibration",
                           "2", "--profile", "--resident-up-to", "1", "--threads", str(threads + 1), "--out", str(out)])
    assert out.is_file() and result["threads"] == threads + 1
    # run in-process, it leaves the caller's threads (a later training here ran 6x slower on 2 oversubscribed
    # cores) and no scratch files
    assert torch.get_num_threads() == threads
    assert scratch() == before
    names = {"eager", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_bf16", "openvino_int8"}
    for batch in ("1", "2"):
        measured = set(result["throughput"][batch])
        assert measured | set(result["skipped"]) == names and not measured & set(result["skipped"])
        assert all(row["images_per_s"] > 0 for row in result["throughput"][batch].values())
    assert result["one_backend_at_a_time"] == ["2"]  # batch 2 opened each backend alone, and measured them all
    assert {"eager", "ort_fp32", "ort_int8"} <= set(result["throughput"]["1"])
    if "openvino_bf16" in result["skipped"]:  # a CPU without BF16 says which feature it lacks
        assert "bf16" in result["skipped"]["openvino_bf16"].lower()
    assert result["parity"]["ort_fp32"]["agreement"] > 0.99  # the same network, converted
    assert result["int8_ceiling"]["fp32_total_ms"] > 0 and "bound_if_integer_ops_free" in result["int8_ceiling"]
    assert result["cpu_flags"] is not None and set(result["goals"]) and not result["int8_quality"]["meaningful"]
