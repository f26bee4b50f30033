"""The GPU check's driver: CUDA training steps, TensorRT fp16/INT8 engines, latency and parity, as one JSON document.

Why: no TensorRT engine had ever been built and no CUDA step timed, because GPUs are lent rarely and briefly; this
runs everything such a loan should measure, in one process and inside a fixed budget (issue 24, point 5). It is
started by benchmarks/gpu_check.sh (which checks the GPU and installs what it needs); see that file's header.

Phases, in order, each through the product's own code: `data` (oneformer.data.synth), `train` (the train action,
swin_tiny network, --steps CUDA steps), `export` (FP32 ONNX, the export action's export_checkpoint), `quantize`
(the quantize action's INT8 QDQ model), `trt_fp16` / `trt_int8` (the gen_trt_engine action's settings and build),
`latency` (eager CUDA PyTorch, and each engine: median ms and images/s at batch 1, parity against eager with
oneformer.parity.compare). A failed phase is recorded and the phases that need it are skipped; a phase that cannot
finish inside what is left of --budget is skipped too, except `latency`, whose time is kept in reserve.
Exit status: 0 every phase ok, 2 no usable GPU or missing packages (nothing run), 3 some phase failed or skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULT = REPO / "benchmarks" / "results" / "gpu_check.json"
NO_GPU = 2
INCOMPLETE = 3
# What the driver imports besides the standard library (gpu_check.sh installs them with the project)
NEEDED = ("torch", "numpy", "yaml", "pydantic", "transformers", "pytorch_lightning", "onnx", "onnxruntime",
          "pycocotools", "PIL", "oneformer")


@dataclass(frozen=True)
class Phase:
    """One step of the check: its name, the seconds planned for it on one H100, what it needs, what it does."""

    name: str
    budget_s: float
    needs: tuple[str, ...]
    what: str
    essential: bool = False  # never skipped for time: its budget is reserved while earlier phases run


PHASES: tuple[Phase, ...] = (
    Phase("data", 10, (), "synthetic dataset in TAO's layout (oneformer.data.synth)"),
    Phase("train", 70, ("data",), "CUDA training steps of the swin_tiny OneFormer (the train action)"),
    Phase("export", 40, ("train",), "FP32 ONNX with its parity check against PyTorch (the export action)"),
    Phase("quantize", 50, ("export",), "INT8 QDQ ONNX calibrated on synthetic images (the quantize action)"),
    Phase("trt_fp16", 75, ("export",), "TensorRT fp16 engine from the FP32 ONNX (the gen_trt_engine action)"),
    Phase("trt_int8", 75, ("quantize",), "TensorRT INT8 engine from the QDQ ONNX (the gen_trt_engine action)"),
    Phase("latency", 40, ("train",), "median ms and images/s at batch 1, parity against eager CUDA", True),
)
INSTALL_BUDGET_S = 120  # gpu_check.sh's venv and installs, on a registry that answers
TOTAL_BUDGET_S = 480  # the 8 minutes on one H100, installs included


@dataclass
class PhaseResult:
    """What happened to one phase: ok, failed or skipped, how long it took, and why it did not succeed."""

    status: str = "pending"
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Context:
    """What the phases hand each other: the spec, the files they wrote, and the figures for the JSON."""

    args: argparse.Namespace
    work: Path
    device: str
    spec: Any = None
    checkpoint: Path | None = None
    onnx_fp32: Path | None = None
    onnx_int8: Path | None = None
    info: Any = None
    engines: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def log(message: str) -> None:
    """Progress on stderr: stdout carries only the JSON document."""
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (gpu_check.sh passes its own arguments through)."""
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="CUDA training steps (default 50)")
    ap.add_argument("--epochs", type=int, default=2, help="the steps are split over this many epochs")
    ap.add_argument("--batch", type=int, default=2, help="training batch (the swin_tiny preset's 2)")
    ap.add_argument("--train-size", type=int, default=640, help="synthetic image size in px")
    ap.add_argument("--size", type=int, default=640, help="export, engine and latency input size in px")
    ap.add_argument("--precision", default="bf16-mixed", help="train.precision (32, 16-mixed, bf16-mixed)")
    ap.add_argument("--calibration", type=int, default=8, help="INT8 calibration images")
    ap.add_argument("--parity-images", type=int, default=4, help="images for parity and latency")
    ap.add_argument("--runs", type=int, default=30, help="timed calls per backend")
    ap.add_argument("--trt-opt-level", type=int, choices=range(6), default=None,
                    help="TensorRT builder_optimization_level (default TensorRT's, 3); lower builds faster")
    ap.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for the whole check")
    ap.add_argument("--started", type=float, default=None, help="epoch seconds the check began (gpu_check.sh's)")
    ap.add_argument("--install-seconds", type=float, default=0.0, help="gpu_check.sh's install time, for the JSON")
    ap.add_argument("--workdir", help="folder for data, checkpoints, ONNX files and engines (default: a temp one)")
    ap.add_argument("--out", help="JSON file (default $OUT/gpu_check.json, else benchmarks/results/gpu_check.json)")
    ap.add_argument("--plan", action="store_true", help="print the phase plan as JSON and exit (no GPU needed)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="for tests: the smoke model on the CPU at 128 px, 2 steps, no TensorRT (no GPU needed)")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        args.steps, args.epochs, args.batch, args.train_size, args.size = 2, 1, 2, 128, 128
        args.precision, args.calibration, args.parity_images, args.runs = "32", 2, 2, 3
    if args.steps < 1 or args.epochs < 1 or args.batch < 1:
        ap.error("--steps, --epochs and --batch must be >= 1")
    if args.size % 32 or args.train_size % 32:
        ap.error("--size and --train-size must be multiples of 32 (the network's size divisibility)")
    return args


def schedule(steps: int, epochs: int, batch: int) -> dict[str, int]:
    """Epochs x iterations covering `steps`, and the training images that gives (one pass per epoch)."""
    epochs = min(epochs, steps)
    iters = math.ceil(steps / epochs)
    return {"epochs": epochs, "iters_per_epoch": iters, "steps": epochs * iters, "train_images": iters * batch}


def plan(args: argparse.Namespace) -> dict:
    """The phases with their budgets and dependencies, and whether the planned total fits --budget."""
    phases = [{"name": p.name, "budget_s": p.budget_s, "needs": list(p.needs), "what": p.what} for p in PHASES]
    planned = INSTALL_BUDGET_S + sum(p.budget_s for p in PHASES)
    return {"phases": phases, "install_budget_s": INSTALL_BUDGET_S, "planned_s": planned, "budget_s": args.budget,
            "fits": planned <= args.budget, "training": schedule(args.steps, args.epochs, args.batch)}


def blocked(phase: Phase, results: dict[str, PhaseResult]) -> str | None:
    """Why a phase cannot run because of an earlier one (None: its needs are met)."""
    for need in phase.needs:
        status = results[need].status if need in results else "did not run"
        if status != "ok":
            return f"needs {need} ({status})"
    return None


def out_of_time(phase: Phase, remaining: float, later: Sequence[Phase]) -> str | None:
    """Why a phase is skipped for time: less than half its budget is left once the essential later phases'
    budgets are reserved (None: it starts). Essential phases always start."""
    if phase.essential:
        return None
    reserve = sum(p.budget_s for p in later if p.essential)
    if remaining - reserve < phase.budget_s / 2:
        return (f"out of time: {remaining:.0f} s of the budget left, {reserve:.0f} s of it reserved for "
                f"{', '.join(p.name for p in later if p.essential)}; this phase is planned at {phase.budget_s:.0f} s")
    return None


def missing_modules(names: Sequence[str] = NEEDED) -> list[str]:
    """The needed modules that cannot be imported here."""
    return [n for n in names if importlib.util.find_spec(n) is None]


def preflight(allow_cpu: bool) -> str | None:
    """None when the check can run; else one line saying what is missing and what to do."""
    missing = missing_modules()
    if missing:
        return (f"missing Python packages: {', '.join(missing)}; run `bash benchmarks/gpu_check.sh`, which "
                f"installs them with the project (pip install -c constraints.txt -e .)")
    import torch

    if allow_cpu or torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA: a CPU-only wheel"
    return (f"no GPU: PyTorch {torch.__version__} ({build}) sees no CUDA device; run this on a machine with an "
            f"NVIDIA GPU and a CUDA build of torch (bash benchmarks/gpu_check.sh installs one)")


def tensorrt_status() -> tuple[str | None, str | None]:
    """(TensorRT's version, None), or (None, why it cannot be used)."""
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - any import failure (missing libs too) means no engines
        return None, f"TensorRT cannot be imported ({type(exc).__name__}: {exc})"
    return str(tensorrt.__version__), None


def nvidia_smi() -> dict[str, str]:
    """The GPU's name, driver and memory as nvidia-smi reports them (empty where it is missing)."""
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    name, driver, memory = (x.strip() for x in (line.split(",") + ["", ""])[:3])
    return {"name": name, "driver": driver, "memory": memory}


def environment(trt_version: str | None, trt_error: str | None) -> dict:
    """GPU, driver and library versions for the JSON."""
    import onnxruntime
    import torch

    smi = nvidia_smi()
    cuda = torch.cuda.is_available()
    return {"gpu": torch.cuda.get_device_name(0) if cuda else smi.get("name"), "driver": smi.get("driver"),
            "gpu_memory": smi.get("memory"), "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "torch": torch.__version__, "tensorrt": trt_version, "tensorrt_error": trt_error,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(), "cpus": os.cpu_count()}


def images_per_s(ms: float | None) -> float | None:
    """Batch-1 throughput from a median latency."""
    return round(1000 / ms, 2) if ms else None


def assemble(env: dict, results: dict[str, PhaseResult], figures: dict, args: argparse.Namespace,
             total_s: float) -> dict:
    """The JSON document: environment, each phase's status and wall time, and the figures the phases produced."""
    phases = {name: {"status": r.status, "seconds": round(r.seconds, 1),
                     **({"error": r.error} if r.error else {})} for name, r in results.items()}
    latency = figures.get("latency", {})
    ms = latency.get("median_ms", {})
    return {
        "benchmark": "gpu_check", "ok": all(r.status == "ok" for r in results.values()),
        "environment": env,
        "wall_s": {"install": round(args.install_seconds, 1),
                   **{name: round(r.seconds, 1) for name, r in results.items()}, "total": round(total_s, 1)},
        "budget_s": args.budget, "phases": phases,
        "train": figures.get("train"), "export": figures.get("export"), "quantize": figures.get("quantize"),
        "engines": {k: figures[k] for k in ("trt_fp16", "trt_int8") if k in figures},
        "latency": {"batch": 1, "input": [1, 3, args.size, args.size], "runs": args.runs, "median_ms": ms,
                    "images_per_s": {k: images_per_s(v) for k, v in ms.items()},
                    "speedup_vs_eager": {k: round(ms["eager_cuda"] / v, 2) for k, v in ms.items()
                                         if "eager_cuda" in ms and v},
                    "parity_vs_eager": latency.get("parity", {})},
        "notes": ["weights are trained for only --steps steps: label agreement on them says little (near one label "
                  "everywhere); max_abs_diff is the signal", "eager_cuda is float32 PyTorch; eager_cuda_bf16 runs it "
                  "under bf16 autocast; each call includes the host-to-device copy and the copy of the outputs back",
                  "on TensorRT 10 the int8 engine is built with FP16 as well: the layers the QDQ model leaves float "
                  "may run in FP16 (engines.trt_int8.builder_flags)"],
    }


def result_path(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Path:
    """--out, else $OUT/gpu_check.json (the device machine's returned folder), else benchmarks/results/."""
    environ = os.environ if environ is None else environ
    if args.out:
        return Path(args.out)
    if environ.get("OUT"):
        return Path(environ["OUT"]) / "gpu_check.json"
    return DEFAULT_RESULT


# --- the phases (each takes the context, writes its figures into it) ---

def deep_merge(base: dict, extra: dict) -> dict:
    """base with extra's keys laid over it, nested dicts merged."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def phase_data(ctx: Context) -> None:
    import yaml

    from oneformer.data.synth import generate
    from oneformer.presets import preset
    from oneformer.spec import build_spec

    a = ctx.args
    sched = schedule(a.steps, a.epochs, a.batch)
    spec_file = generate(ctx.work / "data", train=sched["train_images"], val=a.parity_images, size=a.train_size,
                         inference=1, calibration=a.calibration)
    data = yaml.safe_load(spec_file.read_text())
    if not a.cpu_smoke:  # the swin_tiny preset's network and data settings over the synthetic dataset's paths
        swin = preset("swin_tiny")
        swin["model"]["sem_seg_head"]["num_classes"] = data["model"]["sem_seg_head"]["num_classes"]
        data["model"] = swin["model"]
        data["dataset"] = deep_merge(data["dataset"], swin["dataset"])
        workers = max(1, min(8, (os.cpu_count() or 2) - 2))
        data["dataset"] = deep_merge(data["dataset"], {"train": {"num_workers": workers},
                                                       "val": {"num_workers": 0}})
    data["dataset"] = deep_merge(data["dataset"], {"train": {"batch_size": a.batch}})
    data["results_dir"] = str(ctx.work / "results")
    data["train"] = deep_merge(data.get("train", {}), {
        "num_gpus": 0 if a.cpu_smoke else 1, "precision": a.precision, "num_epochs": sched["epochs"],
        "iters_per_epoch": sched["iters_per_epoch"], "checkpoint_interval": sched["epochs"],
        "validation_interval": sched["epochs"] + 1})  # no validation: the check times steps, not quality
    data["export"] = {"input_height": a.size, "input_width": a.size, "parity_images": a.parity_images,
                      "min_agreement": 0}
    data["quantize"] = {"num_calibration_images": a.calibration, "min_agreement": None}
    data["evaluate"] = {"max_images": 2}
    ctx.spec = build_spec(data)
    ctx.figures["data"] = {**sched, "image_size": a.train_size, "val_images": a.parity_images}


def step_timer() -> Any:
    """A Lightning callback that times each training step (CUDA-synchronized)."""
    import pytorch_lightning as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.start = 0.0

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                               batch: object, batch_idx: int) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    return StepTimer()


def step_rate(start: float, ends: Sequence[float], warmup: int) -> dict:
    """Steps/s after `warmup` steps (kernel selection, allocator growth), and over all steps."""
    n = len(ends)
    warm = min(warmup, max(n - 2, 0))
    steady = (n - 1 - warm) / (ends[-1] - ends[warm]) if n - 1 - warm > 0 and ends[-1] > ends[warm] else None
    return {"steps": n, "warmup_steps": warm, "steps_per_s": round(steady, 3) if steady else None,
            "steps_per_s_all": round(n / (ends[-1] - start), 3) if n and ends[-1] > start else None,
            "first_step_s": round(ends[0] - start, 2) if n else None}


def phase_train(ctx: Context) -> None:
    import torch

    from oneformer.actions.train import train

    timer = step_timer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(ctx.spec, callbacks=[timer])
    ctx.checkpoint = Path(result["checkpoints"][-1]["path"])
    ctx.figures["train"] = {
        **step_rate(timer.start, timer.ends, warmup=min(10, ctx.args.steps // 5)),
        "batch": ctx.args.batch, "image_size": ctx.args.train_size, "precision": ctx.spec.train.precision,
        "images_per_s": None, "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available() else None, "checkpoint": str(ctx.checkpoint)}
    rate = ctx.figures["train"]["steps_per_s"]
    ctx.figures["train"]["images_per_s"] = round(rate * ctx.args.batch, 2) if rate else None


def phase_export(ctx: Context) -> None:
    from oneformer.actions.export import export_checkpoint
    from oneformer.runtime.onnx import OnnxPredictor

    ctx.onnx_fp32 = ctx.work / "model.onnx"
    report = export_checkpoint(ctx.checkpoint, ctx.onnx_fp32, ctx.spec, 0.0)
    ctx.info = OnnxPredictor(ctx.onnx_fp32).info
    ctx.figures["export"] = {k: report[k] for k in ("agreement", "max_abs_diff", "opset_version", "seconds")}
    ctx.figures["export"]["size_mb"] = round(ctx.onnx_fp32.stat().st_size / 2**20, 1)


def phase_quantize(ctx: Context) -> None:
    from oneformer.actions.quantize import quantize

    ctx.spec.quantize.model_path = str(ctx.onnx_fp32)
    report = quantize(ctx.spec)
    ctx.onnx_int8 = Path(report["onnx_file"])
    ctx.figures["quantize"] = {k: report.get(k) for k in ("agreement", "max_abs_diff", "excluded_nodes", "size_mb",
                                                          "mIoU", "seconds")}


def build_engine(ctx: Context, precision: str, onnx_file: Path) -> None:
    from dataclasses import replace

    from oneformer.actions.gen_trt_engine import build, builder_flags, settings
    from oneformer.runtime.tensorrt import require_tensorrt

    cfg = ctx.spec.gen_trt_engine
    cfg.onnx_file, cfg.overwrite = str(onnx_file), True
    cfg.tensorrt.data_type = precision
    cfg.tensorrt.timing_cache = str(ctx.work / "trt.timing.cache")  # shared: the second build reuses the first's
    s = replace(settings(ctx.spec), optimization_level=ctx.args.trt_opt_level)
    built = build(s)
    ctx.engines[precision] = s.engine_file
    flags = [str(f).rsplit(".", 1)[-1] for f in builder_flags(require_tensorrt(), precision)]
    ctx.figures[f"trt_{precision}"] = {**built, "optimization_level": s.optimization_level, "builder_flags": flags,
                                       "onnx_file": onnx_file.name}


def phase_trt_fp16(ctx: Context) -> None:
    build_engine(ctx, "fp16", ctx.onnx_fp32)


def phase_trt_int8(ctx: Context) -> None:
    build_engine(ctx, "int8", ctx.onnx_int8)


def phase_latency(ctx: Context) -> None:
    import torch

    from oneformer.data.readers import read_image
    from oneformer.parity import compare, sample_images
    from oneformer.runtime.predictor import ModelInfo, prepare
    from oneformer.runtime.timing import median_ms
    from oneformer.runtime.torch import TorchPredictor

    eager = TorchPredictor(ctx.checkpoint, device=ctx.device)
    info = ctx.info or ModelInfo(task="semantic", output="scores", input_size=[ctx.args.size] * 2,
                                 mean=eager.info.mean, std=eager.info.std, label_map=eager.info.label_map,
                                 contiguous_id=eager.info.contiguous_id)

    def bf16(x: torch.Tensor) -> Any:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return eager(x, "semantic")

    backends: dict[str, Callable[[torch.Tensor], Any]] = {"eager_cuda": lambda x: eager(x, "semantic")}
    if ctx.device.startswith("cuda"):
        backends["eager_cuda_bf16"] = bf16
    from oneformer.runtime.tensorrt import TensorRTPredictor

    for precision, engine_file in ctx.engines.items():
        engine = TensorRTPredictor(engine_file, ctx.device)
        backends[f"tensorrt_{precision}"] = lambda x, e=engine: e(x, "semantic")
    pics = sample_images(ctx.spec, ctx.args.parity_images, "the GPU check's latency")
    pixels = [prepare(read_image(p), tuple(info.input_size), info.mean, info.std).pixels for p in pics]
    ms = median_ms(backends, pixels, ctx.args.runs)
    parity = {}
    for name, fn in backends.items():
        if name != "eager_cuda":
            report = compare(backends["eager_cuda"], fn, pics, info)
            parity[name] = {"agreement": round(report["agreement"], 4), "max_abs_diff": report["max_abs_diff"],
                            "images": report["images"]}
    ctx.figures["latency"] = {"median_ms": ms, "parity": parity}


RUNNERS: dict[str, Callable[[Context], None]] = {
    "data": phase_data, "train": phase_train, "export": phase_export, "quantize": phase_quantize,
    "trt_fp16": phase_trt_fp16, "trt_int8": phase_trt_int8, "latency": phase_latency}


def run_phases(ctx: Context, deadline: float, trt_error: str | None,
               runners: dict[str, Callable[[Context], None]] = RUNNERS,
               clock: Callable[[], float] = time.time) -> dict[str, PhaseResult]:
    """Run each phase in order unless blocked, out of time or without TensorRT; a failure is recorded, not
    raised."""
    results: dict[str, PhaseResult] = {}
    for i, phase in enumerate(PHASES):
        result = results[phase.name] = PhaseResult()
        why = ((trt_error if phase.name.startswith("trt_") else None) or blocked(phase, results)
               or out_of_time(phase, deadline - clock(), PHASES[i + 1:]))
        if why:
            result.status, result.error = "skipped", why
            log(f"{phase.name}: skipped ({why})")
            continue
        log(f"{phase.name}: {phase.what} (planned {phase.budget_s:.0f} s, {deadline - clock():.0f} s of the "
            f"budget left)")
        t0 = clock()
        try:
            runners[phase.name](ctx)
            result.status = "ok"
        except Exception as exc:  # noqa: BLE001 - a failed phase is a finding: record it and go on
            result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
            log(f"{phase.name}: FAILED: {result.error}\n{traceback.format_exc()}")
        result.seconds = clock() - t0
        log(f"{phase.name}: {result.status} in {result.seconds:.1f} s")
    return results


def phases_on_stderr(ctx: Context, deadline: float, trt_error: str | None) -> dict[str, PhaseResult]:
    """run_phases with file descriptor 1 pointed at stderr (progress bars, DataLoader workers, TensorRT's own
    prints), so that stdout carries the JSON document alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        return run_phases(ctx, deadline, trt_error)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = args.started or time.time() - args.install_seconds
    if args.plan:
        print(json.dumps(plan(args), indent=1))
        return 0
    problem = preflight(allow_cpu=args.cpu_smoke)
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return NO_GPU
    trt_version, trt_error = (None, "--cpu-smoke builds no engines") if args.cpu_smoke else tensorrt_status()
    env = environment(trt_version, trt_error)
    log(f"{env['gpu'] or 'CPU'}, driver {env['driver']}, torch {env['torch']} (CUDA {env['cuda']}), TensorRT "
        f"{trt_version or 'none: ' + str(trt_error)}")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args=args, work=work, device="cpu" if args.cpu_smoke else "cuda:0")
    results = phases_on_stderr(ctx, started + args.budget, trt_error)
    doc = assemble(env, results, ctx.figures, args, time.time() - started)
    text = json.dumps(doc, indent=1)
    print(text)
    out = result_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    log(f"wrote {out}; {'every phase ok' if doc['ok'] else 'INCOMPLETE: see phases'} in {time.time() - started:.0f} s")
    return 0 if doc["ok"] else INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
