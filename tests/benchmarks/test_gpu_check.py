"""The GPU check's CPU side: it fails fast and clearly without a GPU, plans its phases, and assembles its JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
DRIVER = REPO / "benchmarks" / "gpu_check.py"


def load_driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check_driver", DRIVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


gc = load_driver()


def fake_bin(tmp_path: Path, nvidia_smi: str | None) -> Path:
    """A PATH folder with the few tools the script's first lines use, and a stand-in nvidia-smi (None: none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("date", "dirname", "head", "timeout", "sed", "awk", "mkdir"):
        found = next(Path(d) / tool for d in os.environ["PATH"].split(os.pathsep) if (Path(d) / tool).is_file())
        (bin_dir / tool).symlink_to(found)
    if nvidia_smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    return bin_dir


def run_script(tmp_path: Path, nvidia_smi: str | None, **env: str) -> subprocess.CompletedProcess:
    venv = tmp_path / "venv"
    environ = {"PATH": str(fake_bin(tmp_path, nvidia_smi)), "HOME": str(tmp_path), "GPU_CHECK_VENV": str(venv),
               **env}
    bash = next(Path(d) / "bash" for d in os.environ["PATH"].split(os.pathsep) if (Path(d) / "bash").is_file())
    done = subprocess.run([str(bash), str(SCRIPT)], capture_output=True, text=True, env=environ, timeout=60,
                          cwd=tmp_path)  # the timeout is the "fails fast" bound: seconds, not minutes of installs
    assert not venv.exists() and not (tmp_path / ".cache").exists(), "nothing may be installed without a GPU"
    return done


def test_no_nvidia_smi_fails_in_seconds_with_one_clear_line_and_installs_nothing(tmp_path: Path) -> None:
    done = run_script(tmp_path, None)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU: nvidia-smi is not on PATH")
    assert "run this on a machine with an NVIDIA GPU" in lines[0]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_the_script_as_run_here_fails_fast_and_creates_no_venv(tmp_path: Path) -> None:
    """`bash benchmarks/gpu_check.sh` in this environment, unchanged but for where its default venv would go."""
    cache = tmp_path / "cache"
    before = {p for p in REPO.iterdir() if p.name.startswith(".venv")}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU:") and "NVIDIA GPU" in lines[0]
    assert not cache.exists() and {p for p in REPO.iterdir() if p.name.startswith(".venv")} == before


@pytest.mark.parametrize(("smi", "message"), [
    ("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.' >&2; exit 9",
     "no GPU: nvidia-smi failed: NVIDIA-SMI has failed because it could not communicate"),
    ("exit 0", "no GPU: nvidia-smi lists no device"),
])
def test_a_broken_or_empty_nvidia_smi_fails_fast(tmp_path: Path, smi: str, message: str) -> None:
    done = run_script(tmp_path, smi)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only torch to be refused")
def test_offline_without_cuda_torch_is_refused_before_installing(tmp_path: Path) -> None:
    done = run_script(tmp_path, "echo 'NVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB'", GPU_CHECK_OFFLINE="1",
                      GPU_CHECK_PYTHON=sys.executable)
    assert done.returncode == 2
    assert "GPU: NVIDIA H100 80GB HBM3" in done.stderr and "has no CUDA torch" in done.stderr


def test_the_plan_needs_no_gpu_and_fits_eight_minutes(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GPU_CHECK_PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [p["name"] for p in doc["phases"]] == ["data", "train", "export", "quantize", "trt_fp16", "trt_int8",
                                                  "latency"]
    assert doc["fits"] and doc["planned_s"] <= doc["budget_s"] == 480
    assert doc["training"] == {"epochs": 2, "iters_per_epoch": 25, "steps": 50, "train_images": 50}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_the_driver_alone_also_fails_fast_without_cuda() -> None:
    done = subprocess.run([sys.executable, str(DRIVER)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "gpu_check: no GPU: PyTorch" in done.stderr and "sees no CUDA device" in done.stderr


def test_arguments_and_their_checks() -> None:
    args = gc.parse_args([])
    assert (args.steps, args.batch, args.size, args.precision, args.budget) == (50, 2, 640, "bf16-mixed", 480)
    smoke = gc.parse_args(["--cpu-smoke"])
    assert (smoke.steps, smoke.size, smoke.precision) == (2, 128, "32")
    with pytest.raises(SystemExit):
        gc.parse_args(["--size", "100"])
    with pytest.raises(SystemExit):
        gc.parse_args(["--trt-opt-level", "7"])


def test_schedule_covers_the_steps() -> None:
    assert gc.schedule(50, 2, 2) == {"epochs": 2, "iters_per_epoch": 25, "steps": 50, "train_images": 50}
    assert gc.schedule(3, 10, 4) == {"epochs": 3, "iters_per_epoch": 1, "steps": 3, "train_images": 4}
    assert gc.schedule(51, 2, 1)["steps"] == 52


def test_preflight_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "NEEDED", ("json", "surely_not_a_module_xyz"))
    assert gc.missing_modules(gc.NEEDED) == ["surely_not_a_module_xyz"]
    monkeypatch.setattr(gc, "missing_modules", lambda names=None: ["pydantic"])
    assert gc.preflight(allow_cpu=True).startswith("missing Python packages: pydantic;")


def test_phase_gates() -> None:
    by = {p.name: p for p in gc.PHASES}
    results = {"data": gc.PhaseResult("ok"), "train": gc.PhaseResult("failed")}
    assert gc.blocked(by["train"], results) is None
    assert gc.blocked(by["export"], results) == "needs train (failed)"
    assert gc.blocked(by["trt_int8"], results) == "needs quantize (did not run)"
    later = gc.PHASES[5:]  # trt_int8, latency
    assert gc.out_of_time(by["trt_fp16"], 200, later) is None
    assert "out of time: 60 s of the budget left, 40 s of it reserved for latency" in gc.out_of_time(
        by["trt_fp16"], 60, later)
    assert gc.out_of_time(by["latency"], 1, ()) is None  # essential: always starts


def test_run_phases_records_failures_skips_dependents_and_keeps_latency() -> None:
    now = [0.0]
    calls: list[str] = []

    def runner(name: str, seconds: float, fail: bool = False):  # noqa: ANN202
        def run(ctx: object) -> None:
            calls.append(name)
            now[0] += seconds
            if fail:
                raise RuntimeError("boom")
        return run

    runners = {"data": runner("data", 5), "train": runner("train", 60), "export": runner("export", 30),
               "quantize": runner("quantize", 40, fail=True), "trt_fp16": runner("trt_fp16", 400),
               "trt_int8": runner("trt_int8", 1), "latency": runner("latency", 20)}
    results = gc.run_phases(object(), deadline=480, trt_error=None, runners=runners, clock=lambda: now[0])
    assert calls == ["data", "train", "export", "quantize", "trt_fp16", "latency"]
    assert results["quantize"].status == "failed" and results["quantize"].error == "RuntimeError: boom"
    assert results["trt_int8"].status == "skipped" and results["trt_int8"].error == "needs quantize (failed)"
    assert results["latency"].status == "ok" and results["trt_fp16"].seconds == 400
    now[0] = 0.0
    results = gc.run_phases(object(), 480, "TensorRT cannot be imported (ImportError: x)", runners, lambda: now[0])
    assert {results[n].error for n in ("trt_fp16", "trt_int8")} == {"TensorRT cannot be imported (ImportError: x)"}
    now[0] = 0.0
    runners["train"] = runner("train", 450)
    results = gc.run_phases(object(), 480, None, runners, lambda: now[0])
    assert results["export"].status == "skipped" and results["export"].error.startswith("out of time")
    assert results["latency"].status == "ok"


def test_the_json_document() -> None:
    args = gc.parse_args(["--install-seconds", "95.5"])
    results = {"data": gc.PhaseResult("ok", 4.0), "trt_int8": gc.PhaseResult("skipped", 0, "needs quantize (x)")}
    figures = {"train": {"steps_per_s": 3.2}, "trt_fp16": {"build_seconds": 70.1},
               "latency": {"median_ms": {"eager_cuda": 40.0, "tensorrt_fp16": 8.0},
                           "parity": {"tensorrt_fp16": {"agreement": 0.999, "max_abs_diff": {"scores": 0.01}}}}}
    env = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "cuda": "12.8", "tensorrt": "10.16.1.11"}
    doc = json.loads(json.dumps(gc.assemble(env, results, figures, args, total_s=400.04)))
    assert doc["ok"] is False and doc["environment"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert doc["wall_s"] == {"install": 95.5, "data": 4.0, "trt_int8": 0.0, "total": 400.0}
    assert doc["phases"]["trt_int8"] == {"status": "skipped", "seconds": 0.0, "error": "needs quantize (x)"}
    lat = doc["latency"]
    assert lat["images_per_s"] == {"eager_cuda": 25.0, "tensorrt_fp16": 125.0} and lat["input"] == [1, 3, 640, 640]
    assert lat["speedup_vs_eager"]["tensorrt_fp16"] == 5.0 and lat["parity_vs_eager"]["tensorrt_fp16"]["agreement"]
    assert doc["engines"] == {"trt_fp16": {"build_seconds": 70.1}} and doc["train"] == {"steps_per_s": 3.2}


def test_the_gpu_spec_is_the_swin_tiny_network_on_synthetic_data(tmp_path: Path) -> None:
    """The spec the GPU run trains (not the CPU smoke one): swin_tiny's network, one CUDA device, bf16."""
    ctx = gc.Context(args=gc.parse_args(["--steps", "4", "--epochs", "2", "--train-size", "128", "--calibration", "2",
                                         "--parity-images", "2"]), work=tmp_path, device="cuda:0")
    gc.phase_data(ctx)
    spec = ctx.spec
    assert (spec.model.backbone.swin.embed_dim, spec.model.backbone.swin.depths) == (96, [2, 2, 6, 2])
    assert spec.model.one_former.num_object_queries == 150 and spec.model.one_former.dec_layers == 10
    assert (spec.train.num_gpus, spec.train.precision, spec.train.num_epochs, spec.train.iters_per_epoch) == (
        1, "bf16-mixed", 2, 2)
    assert spec.dataset.train.batch_size == 2 and spec.export.input_height == 640
    assert ctx.figures["data"]["train_images"] == 4


def test_where_the_json_goes(tmp_path: Path) -> None:
    args = gc.parse_args([])
    assert gc.result_path(args, {"OUT": str(tmp_path)}) == tmp_path / "gpu_check.json"
    assert gc.result_path(args, {}) == REPO / "benchmarks" / "results" / "gpu_check.json"
    assert gc.result_path(gc.parse_args(["--out", "x.json"]), {"OUT": "y"}) == Path("x.json")


def test_step_rate_and_merge() -> None:
    rate = gc.step_rate(0.0, [2.0, 2.5, 3.0, 3.5, 4.0], warmup=1)
    assert rate == {"steps": 5, "warmup_steps": 1, "steps_per_s": 2.0, "steps_per_s_all": 1.25, "first_step_s": 2.0}
    assert gc.step_rate(0.0, [], 10)["steps_per_s"] is None
    assert gc.deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}, "d": 1}


@pytest.mark.slow
def test_cpu_smoke_runs_every_phase_but_tensorrt_through_the_product_code(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(DRIVER), "--cpu-smoke", "--workdir", str(tmp_path / "work"), "--out",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]  # incomplete: no engines on the CPU
    doc = json.loads(done.stdout)
    assert doc == json.loads(out.read_text())
    status = {k: v["status"] for k, v in doc["phases"].items()}
    assert status == {"data": "ok", "train": "ok", "export": "ok", "quantize": "ok", "trt_fp16": "skipped",
                      "trt_int8": "skipped", "latency": "ok"}
    assert doc["train"]["steps"] == 2 and doc["export"]["agreement"] == 1.0
    assert doc["latency"]["median_ms"]["eager_cuda"] > 0 and doc["latency"]["images_per_s"]["eager_cuda"] > 0


@pytest.mark.gpu
def test_a_short_real_check_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(DRIVER), "--steps", "4", "--epochs", "1", "--size", "256",
                           "--train-size", "256", "--calibration", "2", "--parity-images", "2", "--runs", "5",
                           "--trt-opt-level", "0", "--workdir", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    doc = json.loads(out.read_text())
    assert doc["phases"]["train"]["status"] == "ok" and doc["train"]["steps"] == 4, done.stderr[-3000:]
    assert doc["latency"]["median_ms"]["eager_cuda"] > 0
    if doc["environment"]["tensorrt"]:
        assert done.returncode == 0, doc["phases"]
        assert doc["latency"]["parity_vs_eager"]["tensorrt_fp16"]["max_abs_diff"]
