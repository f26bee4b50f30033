"""Throughput and latency of one network on every CPU backend, side by side in one process (JSON out).

Backends: PyTorch eager, ONNX Runtime FP32 and INT8, OpenVINO FP32, BF16 and INT8 (INT8: our QDQ file), at
batch 1, 4 and 8. Batch 1 (up to --resident-up-to) runs interleaved round by round on the same prepared images
with every backend open; larger batches one backend at a time, each opened and closed in turn: six 640 px Swin-T
backends held together at batch 4 took 21 of this machine's 24 GiB, slowing every one of them, and at batch 8
they did not fit at all. The network is a real-size --arch (OneFormer: the swin_tiny preset; Mask2Former: the same
Swin-T with TAO's Mask2Former head, 100 queries; SegFormer: MiT-B2), or with `--model smoke` the network's CPU
smoke preset, exported and quantized by the product's own export/quantize code. Weights are random unless
--checkpoint names a trained one or --train-epochs trains the network briefly on synthetic data first: only then
is the INT8 quality side (the quantize action's validation mIoU drop) meaningful, since random weights predict
nearly one label everywhere.

Goals: ORT FP32 >= 1.8x eager; INT8 >= 2.0x ORT FP32 at batch 1 with validation mIoU drop <= 0.01. Where the
INT8 goal is missed, `int8_ceiling` gives the reason in figures from ONNX Runtime's per-op profile: the float
ops left in the INT8 graph, the integer kernels' own speed-up and the bound that the float ops alone set. A
backend this machine cannot run (OpenVINO not installed, BF16 without the CPU feature) is listed with the
reason instead of figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from oneformer.actions.export import export_checkpoint
from oneformer.actions.quantize import quantize
from oneformer.data.readers import read_image
from oneformer.data.synth import generate
from oneformer.errors import OneFormerError
from oneformer.model.checkpoint import save_weights
from oneformer.model.network import build_network, network_config
from oneformer.parity import compare, sample_images
from oneformer.presets import preset
from oneformer.runtime.onnx import OnnxPredictor
from oneformer.runtime.predictor import Outputs, prepare
from oneformer.runtime.timing import median_ms
from oneformer.runtime.torch import TorchPredictor
from oneformer.spec import apply_overrides, build_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from op_profile import cpu_flags, int8_ceiling, int8_coverage, op_profile  # benchmarks/ is not a package

INT8_GOAL, FP32_GOAL, MAX_MIOU_DROP = 2.0, 1.8, 0.01
ONNX_BACKENDS = {"ort_fp32": ("onnxruntime", "fp32", "fp32"), "ort_int8": ("onnxruntime", "int8", "int8"),
                 "openvino_fp32": ("openvino", "fp32", "fp32"), "openvino_bf16": ("openvino", "bf16", "fp32"),
                 "openvino_int8": ("openvino", "int8", "int8")}  # name: (backend, precision, which file)
REFERENCE = {"ort_fp32": "eager", "openvino_fp32": "eager", "openvino_bf16": "ort_fp32", "ort_int8": "ort_fp32",
             "openvino_int8": "ort_fp32"}  # what each backend's parity is measured against


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


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's settings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=list(MODELS), default="oneformer", help="the network to measure")
    ap.add_argument("--model", choices=["swin_t", "smoke"], default="swin_t",
                    help="swin_t: the real-size network above; smoke: the network's CPU smoke preset")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--batches", default="1,4,8", help="comma-separated batch sizes")
    ap.add_argument("--runs", type=int, default=5, help="timed rounds at batch 1 (fewer at larger batches)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every backend")
    ap.add_argument("--checkpoint", help="one of our checkpoints (default: random weights)")
    ap.add_argument("--train-epochs", type=int, default=0, help="train this many epochs on synthetic data first")
    ap.add_argument("--train-size", type=int, default=128, help="synthetic image size for --train-epochs")
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="spec overrides, as the CLI takes them (e.g. train.optim.lr=0.0005 for --train-epochs)")
    ap.add_argument("--backends", default=",".join(["eager", *ONNX_BACKENDS]), help="comma-separated subset")
    ap.add_argument("--resident-up-to", type=int, default=1,
                    help="batches up to this size run interleaved with every backend open; larger ones one backend "
                         "at a time, each opened and closed in turn (six 640 px Swin-T backends together at batch 4 "
                         "or 8 exhaust 24 GiB)")
    ap.add_argument("--profile", action="store_true", help="ORT's per-op time of FP32 and INT8 and the INT8 ceiling")
    ap.add_argument("--out", help="also write the JSON here")
    return ap.parse_args(argv)


def build(args: argparse.Namespace, tmp: Path) -> tuple:
    """The spec and checkpoint to measure: random, given, or briefly trained weights."""
    size = args.train_size if args.train_epochs else 256
    data = yaml.safe_load(generate(tmp / "data", train=32 if args.train_epochs else 4, val=8, size=size,
                                   inference=2, calibration=args.calibration, arch=args.arch).read_text())
    if args.model == "swin_t":
        data["model"] = MODELS[args.arch]()
    data |= {"results_dir": str(tmp / "results"),
             "export": {"input_height": args.size, "input_width": args.size, "parity_images": 4, "min_agreement": 0},
             "quantize": {"num_calibration_images": args.calibration, "min_agreement": 0},
             "evaluate": {"max_images": 8}}
    if args.train_epochs:
        data.setdefault("train", {})["num_epochs"] = args.train_epochs
    spec = build_spec(apply_overrides(data, args.overrides))
    if args.checkpoint:
        return spec, Path(args.checkpoint), str(args.checkpoint)
    if args.train_epochs:
        from oneformer.actions.train import train

        best = train(spec)["best"]
        return spec, Path(best["path"]), f"trained {args.train_epochs} epochs on synthetic {size} px"
    from oneformer.data.datasets import read_labels

    labels = read_labels(spec)
    torch.manual_seed(0)
    net = build_network(network_config(spec, labels.names))
    return spec, save_weights(tmp / "random.pth", net, labels, spec.model_dump(mode="json")), "random"


def open_backends(names: list[str], checkpoint: Path, files: dict[str, Path], threads: int
                  ) -> tuple[dict[str, Callable[[torch.Tensor], Outputs]], dict[str, str]]:
    """Each asked-for backend as a pixels -> Outputs call, and the reason for each this machine cannot run."""
    calls: dict[str, Callable[[torch.Tensor], Outputs]] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            if name == "eager":
                predictor = TorchPredictor(checkpoint, device="cpu")
            else:
                backend, precision, which = ONNX_BACKENDS[name]
                if backend == "onnxruntime":
                    predictor = OnnxPredictor(files[which], threads)
                else:
                    from oneformer.runtime.openvino import OpenVinoPredictor

                    predictor = OpenVinoPredictor(files[which], precision, threads)
        except OneFormerError as exc:
            skipped[name] = str(exc)
            continue
        calls[name] = lambda x, p=predictor: p(x, "semantic")
    return calls, skipped


def stack(pixels: list[torch.Tensor], b: int) -> list[torch.Tensor]:
    """Batches of b prepared images, one starting at each image."""
    return [torch.cat([pixels[(i + j) % len(pixels)] for j in range(b)]) for i in range(len(pixels))]


def rounds_at(b: int, runs: int) -> int:
    """Timed rounds at batch b: fewer at larger batches, never under two."""
    return max(2, runs if b == 1 else runs // 2)


def row(ms: float, b: int) -> dict[str, float]:
    """One backend's figures at one batch size."""
    return {"ms": ms, "images_per_s": round(1000 * b / ms, 3)}


def throughput(calls: dict[str, Callable], pixels: list[torch.Tensor], batches: list[int], runs: int) -> dict:
    """Median ms per batch and images/s of every backend at each batch size, interleaved round by round."""
    out: dict[str, dict] = {}
    for b in batches:
        print(f"latency: batch {b}, {rounds_at(b, runs)} rounds of {', '.join(calls)}", file=sys.stderr, flush=True)
        ms = median_ms(calls, stack(pixels, b), rounds_at(b, runs))
        out[str(b)] = {name: row(v, b) for name, v in ms.items()}
    return out


def one_at_a_time(opener: Callable[[str], Callable | None], names: list[str], pixels: list[torch.Tensor],
                  batches: list[int], runs: int) -> dict:
    """The same figures as `throughput` for batches too large to hold every backend at once: each backend is opened,
    measured at every such batch and dropped before the next opens (not interleaved, so drift is not shared)."""
    out: dict[str, dict] = {str(b): {} for b in batches}
    for name in names:
        call = opener(name)
        if call is None:
            continue
        for b in batches:
            print(f"latency: batch {b}, {rounds_at(b, runs)} rounds of {name} alone", file=sys.stderr, flush=True)
            out[str(b)][name] = row(median_ms({name: call}, stack(pixels, b), rounds_at(b, runs))[name], b)
        del call
        gc.collect()  # the session's arena and the compiled model go before the next backend allocates its own
    return out


def ratio(table: dict, batch: str, a: str, b: str) -> float | None:
    """How many times faster backend b is than a at one batch size (None if either did not run)."""
    row = table.get(batch, {})
    return round(row[a]["ms"] / row[b]["ms"], 2) if a in row and b in row else None


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print (and optionally write) its JSON; called in-process (a test, a notebook), it leaves
    the caller's torch thread count and no files behind."""
    args = arguments(argv)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            return run(args, Path(tmp))
    finally:
        torch.set_num_threads(before)


def run(args: argparse.Namespace, tmp: Path) -> dict:
    """The benchmark with its models in `tmp`."""
    spec, checkpoint, weights = build(args, tmp)
    fp32_file = tmp / "model.onnx"
    t0 = time.perf_counter()
    export_checkpoint(checkpoint, fp32_file, spec, 0.0)
    export_s = time.perf_counter() - t0
    spec.quantize.model_path = str(fp32_file)
    t0 = time.perf_counter()
    int8_report = quantize(spec)
    quantize_s = time.perf_counter() - t0
    files = {"fp32": fp32_file, "int8": Path(int8_report["onnx_file"])}

    calls, skipped = open_backends(args.backends.split(","), checkpoint, files, args.threads)
    pics = sample_images(spec, 4, "the latency benchmark")
    info = OnnxPredictor(fp32_file).info
    pixels = [prepare(read_image(p), (args.size, args.size), info.mean, info.std).pixels for p in pics]
    parity = {name: compare(calls[ref], calls[name], pics, info)
              for name, ref in REFERENCE.items() if name in calls and ref in calls}
    batches = [int(b) for b in args.batches.split(",")]
    table = throughput(calls, pixels, [b for b in batches if b <= args.resident_up_to], args.runs)
    alone = [b for b in batches if b > args.resident_up_to]
    if alone:
        names = list(calls)
        calls.clear()
        gc.collect()
        table |= one_at_a_time(lambda n: open_backends([n], checkpoint, files, args.threads)[0].get(n), names,
                               pixels, alone, args.runs)
    fastest_int8 = min((n for n in ("ort_int8", "openvino_int8") if n in table["1"]),
                       key=lambda n: table["1"][n]["ms"], default=None)
    int8_speedup = ratio(table, "1", "ort_fp32", fastest_int8) if fastest_int8 else None
    drop = int8_report.get("miou_drop")
    result = {
        "benchmark": "latency", "arch": args.arch, "model": DESCRIBED[args.arch] if args.model == "swin_t" else
        f"{args.arch} smoke preset", "weights": weights, "input": [3, args.size, args.size],
        "params_m": round(sum(p.numel() for p in TorchPredictor(checkpoint, device="cpu").net.parameters()) / 1e6, 1),
        "threads": args.threads, "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
        "throughput": table, "skipped": skipped, "one_backend_at_a_time": [str(b) for b in alone],
        "speedup_batch1": {name: ratio(table, "1", "ort_fp32", name) for name in table["1"]},
        "parity": {name: {"vs": REFERENCE[name], "agreement": round(p["agreement"], 4),
                          "max_abs_diff": p["max_abs_diff"]} for name, p in parity.items()},
        "int8_quality": {"mIoU": int8_report["mIoU"], "miou_drop": drop, "gate": int8_report["verdict"],
                         "meaningful": weights != "random"},
        "int8_excluded_nodes": int8_report["excluded_nodes"], "size_mb": int8_report["size_mb"],
        "export_s": round(export_s, 1), "quantize_s": round(quantize_s, 1),
        "goals": {f"ort_fp32 >= {FP32_GOAL}x eager": (ratio(table, "1", "eager", "ort_fp32") or 0) >= FP32_GOAL,
                  f"int8 ({fastest_int8}) >= {INT8_GOAL}x ort_fp32": (int8_speedup or 0) >= INT8_GOAL,
                  f"int8 mIoU drop <= {MAX_MIOU_DROP} (trained weights)":
                      weights != "random" and drop is not None and drop <= MAX_MIOU_DROP},
    }
    if args.profile:
        batch1 = pixels[0].numpy()
        fp32_ops = op_profile(str(fp32_file), batch1, threads=args.threads)
        int8_ops = op_profile(str(files["int8"]), batch1, threads=args.threads)
        result["ort_profile_ms_per_run"] = {"fp32": fp32_ops, "int8": int8_ops}
        result["int8_ceiling"] = int8_ceiling(fp32_ops, int8_ops, INT8_GOAL)
        result["int8_coverage"] = int8_coverage(str(files["int8"]))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return result


if __name__ == "__main__":
    main()
