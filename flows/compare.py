"""The three networks on the same synthetic data, side by side (`make demo-all`).

OneFormer, Mask2Former and SegFormer each get the synthetic dataset in their own TAO layout (the same images: one
seed), their CPU smoke preset and the whole pipeline (AutoML, best checkpoint, evaluate, ONNX, INT8, registry), all
in one MLflow store, so the registry holds three models. Then each model's test metrics, latency (PyTorch eager,
ONNX Runtime FP32 and INT8, measured side by side on the same image, batch 1) and size are printed as one table
and written to comparison.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from oneformer.arch_spec import ARCHS, TITLES
from oneformer.data.synth import generate, make_image
from oneformer.runtime.onnx import OnnxPredictor
from oneformer.runtime.predictor import prepare
from oneformer.runtime.timing import median_ms
from oneformer.runtime.torch import TorchPredictor


def sources(arch: str, data: Path) -> list[str]:
    """The pipeline's data arguments for a network's layout: SegFormer's one root, the others' bucket folders."""
    if arch == "segformer":
        return [arg for source in ("train", "eval", "inference", "calibration") for arg in (f"--{source}",
                                                                                              str(data / "data"))]
    folders = {"train": "train", "eval": "eval", "inference": "inference", "calibration": "calibration"}
    return [arg for source, folder in folders.items() for arg in (f"--{source}", str(data / folder))]


def measure(result: dict, runs: int) -> dict[str, Any]:
    """Latency and size of one pipeline run's models, on a synthetic image at the exported size."""
    onnx_file, int8_file = result["artifacts"]["onnx"], result["artifacts"]["int8"]
    fp32, int8 = OnnxPredictor(onnx_file), OnnxPredictor(int8_file)
    eager = TorchPredictor(result["checkpoint"], device="cpu")
    size = tuple(fp32.info.input_size or (128, 128))
    image = make_image(np.random.default_rng(7), max(size))[0]
    pixels = [prepare(image, size, fp32.info.mean, fp32.info.std, fp32.info.size_divisibility).pixels]
    ms = median_ms({"eager": lambda x: eager(x, "semantic"), "ort_fp32": lambda x: fp32(x, "semantic"),
                    "ort_int8": lambda x: int8(x, "semantic")}, pixels, runs)
    return {"latency_ms": ms, "input": [1, 3, *size],
            "params_m": round(sum(p.numel() for p in eager.net.parameters()) / 1e6, 2),
            "onnx_mb": round(Path(onnx_file).stat().st_size / 2**20, 1),
            "int8_mb": round(Path(int8_file).stat().st_size / 2**20, 1)}


def table(rows: dict[str, dict]) -> str:
    """The side-by-side comparison as fixed-width text."""
    head = ["network", "mIoU", "PQ", "AP", "eager ms", "ORT FP32 ms", "INT8 ms", "params M", "ONNX MB", "INT8 MB",
            "registered"]
    lines = [head]
    for arch, r in rows.items():
        m, ms = r["metrics"], r["latency_ms"]
        lines.append([TITLES[arch], *(f"{m[k]:.3f}" if k in m else "-" for k in ("mIoU", "PQ", "AP")),
                      *(f"{ms[k]:.1f}" for k in ("eager", "ort_fp32", "ort_int8")), f"{r['params_m']:.1f}",
                      f"{r['onnx_mb']:.1f}", f"{r['int8_mb']:.1f}", r["registered"] or "-"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Synthesize, run the pipeline for each network, measure, print and write the comparison."""
    from flows.pipeline import main as pipeline

    p = argparse.ArgumentParser(prog="python -m flows.compare", description=__doc__)
    p.add_argument("--out", default=".", help="folder for the data, results, caches and mlflow.db")
    p.add_argument("--trials", type=int, help="AutoML trials per network (default: each preset's automl.n_trials)")
    p.add_argument("--runs", type=int, default=20, help="timed calls per backend")
    p.add_argument("--arch", action="append", choices=ARCHS, help="networks to run (default: all three)")
    p.add_argument("--images", type=int, default=64, help="synthetic training images (a quarter as many to validate)")
    p.add_argument("overrides", nargs="*", help="dotted key=value spec overrides for every network")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    uri = f"sqlite:///{out / 'mlflow.db'}"
    rows = {}
    for arch in a.arch or ARCHS:
        folder = out / "networks" / arch  # not out/<arch>: `python -m` from `out` would import ./oneformer instead
        spec = generate(folder / "data", train=a.images, val=max(2, a.images // 4), size=128, seed=0, arch=arch)
        args = ["--spec", str(spec), "--results-dir", str(folder / "results"), "--mlflow-uri", uri,
                *sources(arch, folder / "data"), *(["--trials", str(a.trials)] if a.trials else []), *a.overrides]
        result = pipeline(args)
        registered = result.get("registered") or {}
        rows[arch] = {"metrics": {k: v for k, v in result["metrics"].items() if isinstance(v, int | float)},
                      "registered": registered.get("model_uri"), "new_version": registered.get("new", False),
                      "checkpoint": result["checkpoint"], **measure(result, a.runs)}
    text = table(rows)
    print("\n" + text + f"\n\nRegistered in {uri}; latency: batch 1, median of {a.runs} interleaved calls on this "
          "machine's CPU")
    (out / "comparison.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    from flows.common import user_errors

    with user_errors():
        main()
