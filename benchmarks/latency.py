"""Inference latency of one model on every backend: PyTorch eager, ONNX Runtime FP32 and INT8 (JSON out).

A real-size network of --arch (OneFormer: the swin_tiny preset; Mask2Former: the same Swin-T with TAO's
Mask2Former head, 100 queries; SegFormer: MiT-B2) with random weights, unless --checkpoint names a trained one, is
exported and quantized by the product's own export/quantize code, then the three run side by side in this
process on the same prepared images, interleaved round by round, batch 1. Goals: ORT FP32 >= 1.8x eager,
INT8 >= 1.5x ORT FP32 with >= 99% pixel agreement. Agreement is only meaningful for trained weights: random
ones predict nearly one label everywhere.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from oneformer.actions.export import export_checkpoint
from oneformer.actions.quantize import quantize
from oneformer.data.readers import read_image
from oneformer.data.synth import generate
from oneformer.model.checkpoint import save_weights
from oneformer.model.network import build_network, network_config
from oneformer.parity import compare, sample_images
from oneformer.presets import preset
from oneformer.runtime.onnx import OnnxPredictor
from oneformer.runtime.predictor import prepare
from oneformer.runtime.timing import median_ms
from oneformer.runtime.torch import TorchPredictor
from oneformer.spec import build_spec


def op_profile(onnx_file: str, pixels: torch.Tensor, runs: int = 3) -> dict[str, float]:
    """ONNX Runtime's profiler: milliseconds per run spent in each op type, largest first."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(onnx_file, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(runs + 1):
        session.run(None, {name: pixels.numpy()})
    trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    runs_seen = [e for e in trace if e.get("name") == "model_run"][1:]  # the first run warms up
    start = runs_seen[0]["ts"] if runs_seen else 0
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1000 / max(len(runs_seen), 1)
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:12]}


def _swin_t(head: str) -> dict:
    model = preset("swin_tiny")["model"]
    if head == "mask_former":
        model = {"arch": "mask2former", "mode": "panoptic", "backbone": model["backbone"],
                 "mask_former": {"num_object_queries": 100, "dec_layers": 10}, "sem_seg_head": {}}
    model["sem_seg_head"]["num_classes"] = 6
    return model


MODELS = {"oneformer": lambda: _swin_t("one_former"), "mask2former": lambda: _swin_t("mask_former"),
          "segformer": lambda: {"arch": "segformer", "backbone": {"type": "mit_b2"}}}
DESCRIBED = {"oneformer": "swin_tiny preset (Swin-T, 150 queries, 10 decoder layers)",
             "mask2former": "Mask2Former, Swin-T, 100 queries, 10 decoder layers, panoptic",
             "segformer": "SegFormer MiT-B2, 768-wide MLP decoder"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--checkpoint", help="one of our checkpoints (default: random Swin-T-size weights)")
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--profile", action="store_true", help="add ORT's per-op-type time for FP32 and INT8")
    ap.add_argument("--arch", choices=list(MODELS), default="oneformer", help="the network to measure")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    data = yaml.safe_load(generate(tmp / "data", train=4, val=8, size=256, inference=2,
                                   calibration=args.calibration, arch=args.arch).read_text())
    data["model"] = MODELS[args.arch]()
    data |= {"results_dir": str(tmp / "results"),
             "export": {"input_height": args.size, "input_width": args.size, "parity_images": 4, "min_agreement": 0},
             "quantize": {"num_calibration_images": args.calibration, "min_agreement": 0},
             "evaluate": {"max_images": 4}}
    spec = build_spec(data)
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        from oneformer.data.datasets import read_labels

        labels = read_labels(spec)
        torch.manual_seed(0)
        net = build_network(network_config(spec, labels.names))
        checkpoint = save_weights(tmp / "random.pth", net, labels, spec.model_dump(mode="json"))
    fp32_file = tmp / "model.onnx"
    t0 = time.perf_counter()
    export_checkpoint(checkpoint, fp32_file, spec, 0.0)
    export_s = time.perf_counter() - t0
    spec.quantize.model_path = str(fp32_file)
    t0 = time.perf_counter()
    int8_report = quantize(spec)
    quantize_s = time.perf_counter() - t0

    eager = TorchPredictor(checkpoint, device="cpu")
    fp32, int8 = OnnxPredictor(fp32_file), OnnxPredictor(int8_report["onnx_file"])
    pics = sample_images(spec, 4, "the latency benchmark")
    pixels = [prepare(read_image(p), (args.size, args.size), fp32.info.mean, fp32.info.std).pixels for p in pics]
    backends = {"eager": lambda x: eager(x, "semantic"), "ort_fp32": lambda x: fp32(x, "semantic"),
                "ort_int8": lambda x: int8(x, "semantic")}
    ms = median_ms(backends, pixels, args.runs)
    eager_vs_fp32 = compare(backends["eager"], backends["ort_fp32"], pics, fp32.info)
    result = {
        "benchmark": "latency", "arch": args.arch, "model": DESCRIBED[args.arch],
        "weights": str(args.checkpoint or "random"), "input": [1, 3, args.size, args.size],
        "params_m": round(sum(p.numel() for p in eager.net.parameters()) / 1e6, 1),
        "torch_threads": torch.get_num_threads(), "runs": args.runs, "median_ms": ms,
        "fp32_vs_eager": round(ms["eager"] / ms["ort_fp32"], 2),
        "int8_vs_fp32": round(ms["ort_fp32"] / ms["ort_int8"], 2),
        "agreement": {"ort_fp32_vs_eager": round(eager_vs_fp32["agreement"], 4),
                      "ort_int8_vs_fp32": round(int8_report["agreement"], 4)},
        "max_abs_diff_fp32_vs_eager": eager_vs_fp32["max_abs_diff"],
        "int8_excluded_nodes": int8_report["excluded_nodes"], "size_mb": int8_report["size_mb"],
        "export_s": round(export_s, 1), "quantize_s": round(quantize_s, 1),
        "goals": {"fp32_vs_eager >= 1.8": ms["eager"] / ms["ort_fp32"] >= 1.8,
                  "int8_vs_fp32 >= 1.5": ms["ort_fp32"] / ms["ort_int8"] >= 1.5,
                  "int8 agreement >= 0.99": int8_report["agreement"] >= 0.99},
    }
    if args.profile:
        result["ort_profile_ms_per_run"] = {"fp32": op_profile(str(fp32_file), pixels[0]),
                                            "int8": op_profile(int8_report["onnx_file"], pixels[0])}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
