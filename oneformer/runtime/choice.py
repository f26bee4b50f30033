"""The fastest backend whose parity passed, for one ONNX file on this machine: measured once, kept next to the file.

Each candidate that can run the file here (ONNX Runtime at the file's precision; OpenVINO at the file's precision;
OpenVINO bf16 for an FP32 file where the CPU has bf16) runs the same prepared images: its median latency
(timing.median_ms) and its parity against ONNX Runtime on the same file (parity.compare: label agreement, max abs
diff). A candidate passes when its agreement reaches MIN_AGREEMENT. The report is written
atomically to `<file>.backends.json`, keyed by the file's sha256, this CPU and the runtimes' versions, so a changed
file, machine or runtime measures again; that report is the parity report of the ONNX -> OpenVINO conversion.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from oneformer.artifacts import sha256, write_json
from oneformer.data.readers import read_image
from oneformer.errors import ConversionError, OneFormerError
from oneformer.parity import compare
from oneformer.runtime.predictor import ModelInfo, Outputs, Predictor, onnx_info, prepare, run_batch
from oneformer.runtime.timing import median_ms

log = logging.getLogger(__name__)

SUFFIX = ".backends.json"
# Label agreement with ONNX Runtime on the same file that a backend must reach to be chosen, at every precision: a
# faster backend that changes more than 1% of the labels is not the same model. (Two INT8 runtimes round the QDQ
# graph's integer products differently, and bf16 rounds every product: a trained model's margins absorb that; random
# weights' near-ties may not, and then ONNX Runtime answers.)
MIN_AGREEMENT = 0.99
IMAGES = 2  # images each candidate runs for parity and timing
RUNS = 4  # timed calls per candidate (after one warm-up), cycling over the images
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni", "neon", "asimd")
BACKENDS = ("onnxruntime", "openvino")  # the runtimes of ONNX files


@dataclass(frozen=True)
class Candidate:
    """A backend at a precision, e.g. openvino at bf16; `name` ("openvino-bf16") is what reports and results show."""

    backend: str
    precision: str

    @property
    def name(self) -> str:
        """The name `predictor.describe` gives the predictor it opens."""
        return f"{self.backend}-{self.precision}"

    @classmethod
    def parse(cls, name: str) -> Candidate:
        """The candidate a report names."""
        backend, _, precision = name.partition("-")
        return cls(backend, precision)


def openvino_installed() -> bool:
    """Whether the openvino package imports here (an installed but broken one counts as missing)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS_ENV = "ONEFORMER_BACKENDS"
AUTO_BACKENDS = ("onnxruntime", "openvino")


def auto_backends() -> tuple[str, ...]:
    """The backends `auto` may measure and choose on this machine: $ONEFORMER_BACKENDS (a comma list), else every
    one installed; ONNX Runtime always stays, as the reference every other backend's parity is checked against."""
    value = os.environ.get(BACKENDS_ENV, "").strip()
    if not value:
        return AUTO_BACKENDS
    names = [n.strip() for n in value.split(",") if n.strip()]
    if bad := [n for n in names if n not in AUTO_BACKENDS]:
        raise OneFormerError(f"${BACKENDS_ENV}={value!r}: {', '.join(map(repr, bad))} is not a backend auto can "
                             f"choose; give a comma list of {', '.join(AUTO_BACKENDS)} (unset: all installed)")
    return tuple(n for n in AUTO_BACKENDS if n in names or n == "onnxruntime")


def bf16_here() -> bool:
    """Whether OpenVINO runs bf16 on this CPU (False without OpenVINO)."""
    if not openvino_installed():
        return False
    from oneformer.runtime.openvino import has_bf16

    return has_bf16()


def candidates(file_precision: str) -> list[Candidate]:
    """What this machine can run a file of `file_precision` (fp32 or int8) with; ONNX Runtime first (the reference)."""
    out = [Candidate("onnxruntime", file_precision)]
    if "openvino" in auto_backends() and openvino_installed():
        out.append(Candidate("openvino", file_precision))
        if file_precision == "fp32" and bf16_here():
            out.append(Candidate("openvino", "bf16"))
    return out


def runnable(candidate: Candidate) -> bool:
    """Whether this machine can run a candidate a report names (a report may come from another machine)."""
    if candidate.backend == "onnxruntime":
        return True
    if candidate.backend == "openvino":
        return openvino_installed() and (candidate.precision != "bf16" or bf16_here())
    return False


def open_candidate(path: Path, candidate: Candidate, threads: int = 0, key: str = "precision") -> Predictor:
    """The predictor of one candidate for an ONNX file."""
    if candidate.backend == "openvino":
        from oneformer.runtime.openvino import OpenVinoPredictor

        return OpenVinoPredictor(path, candidate.precision, threads, key)
    from oneformer.runtime.onnx import OnnxPredictor

    return OnnxPredictor(path, threads)


def machine() -> dict[str, Any]:
    """What makes a measurement this machine's: the CPU, its vector features and cores (the runtimes use them all)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.partition(":")[2].strip()
            elif line.startswith(("flags", "Features")):
                flags |= set(line.partition(":")[2].split())
    except OSError:  # not Linux: the name and core count still tell machines apart
        pass
    return {"cpu": name, "flags": sorted(f for f in CPU_FLAGS if f in flags), "cores": os.cpu_count()}


def versions() -> dict[str, str | None]:
    """The runtimes' versions (None where not installed): an upgrade may change speed and parity."""
    out: dict[str, str | None] = {}
    for package in BACKENDS:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def report_path(path: Path) -> Path:
    """The sidecar report of a model file."""
    return path.with_name(path.name + SUFFIX)


def report_key(path: Path) -> dict[str, Any]:
    """What a report must match to be reused: the file's content, this machine, the installed runtimes and the parity
    bar its verdicts were given against."""
    return {"sha256": sha256(path), "machine": machine(), "versions": versions(), "min_agreement": MIN_AGREEMENT}


def read_report(path: Path, key: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The file's sidecar report when it was measured for this file on this machine with these runtimes and has a row
    for every backend auto may choose now, else None."""
    side = report_path(path)
    try:
        report = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("key") != (key or report_key(path)):
        log.info("%s was measured for another file, machine or runtime version: measuring again", side)
        return None
    reference = Candidate.parse(str(report.get("reference", "onnxruntime-fp32")))
    measured = {Candidate.parse(n).backend for n in report.get("backends", {})}
    if missing := sorted({c.backend for c in candidates(reference.precision)} - measured):  # $ONEFORMER_BACKENDS grew
        log.info("%s was measured without %s: measuring again", side, ", ".join(missing))
        return None
    return report


def sample_images(folder: Path, size: int, n: int = IMAGES) -> list[Path]:
    """n synthetic scenes (the synthetic dataset's generator) as PNGs in `folder`, where no real images are given."""
    from oneformer.data.synth import make_image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        image = make_image(rng, size)[0]
        paths.append(folder / f"scene_{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def measure(path: str | Path, images: list[Path] | None = None, runs: int = RUNS, write: bool = True,
            keep: dict[str, Predictor] | None = None) -> dict[str, Any]:
    """Every candidate of an ONNX file on the same images: median ms, images/s, parity against ONNX Runtime and the
    verdict; the fastest that passed is `chosen`. Written to `<file>.backends.json` unless `write` is False; opened
    predictors are left in `keep` (name -> predictor) for the caller to reuse."""
    path = Path(path)
    info = onnx_info(path)
    if not info.input_size:
        raise OneFormerError(f"{path}: the graph has no fixed input size in its metadata; re-export it")
    key = report_key(path)
    with tempfile.TemporaryDirectory(prefix="oneformer-backends-") as tmp:
        shown = [str(p) for p in images[:IMAGES]] if images else ["synthetic scenes"]
        images = list(images[:IMAGES]) if images else sample_images(Path(tmp), max(info.input_size))
        report = _measure(path, info, images, runs, keep if keep is not None else {})
    report = {"file": path.name, "key": key, "task": info.task, "input_size": info.input_size, "images": shown,
              "runs": runs, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), **report}
    log.info("%s: %s answers (%s)", path.name, report["chosen"], ", ".join(
        f"{n} {r['ms']} ms{'' if r['passed'] else ' [parity failed]'}" if r.get("ms") is not None else f"{n} failed"
        for n, r in report["backends"].items()))
    if write:
        try:
            write_json(report_path(path), report)
        except OSError as exc:  # a read-only folder (a pulled model): measured, used, not kept
            log.warning("could not write %s (%s): the next open measures again", report_path(path), exc)
    return report


def _measure(path: Path, info: ModelInfo, images: list[Path], runs: int, keep: dict[str, Predictor]
             ) -> dict[str, Any]:
    """The measurements of `measure`, candidate by candidate, against ONNX Runtime on the same file."""
    task = info.task or "semantic"
    todo = candidates(info.precision)
    opened: dict[str, Predictor] = {}
    results: dict[str, dict[str, Any]] = {}
    for candidate in todo:
        try:
            opened[candidate.name] = keep.get(candidate.name) or open_candidate(path, candidate)
        except OneFormerError as exc:
            log.warning("%s: %s cannot run it: %s", path.name, candidate.name, exc)
            results[candidate.name] = {"backend": candidate.backend, "precision": candidate.precision, "ms": None,
                                       "images_per_s": None, "passed": False, "error": str(exc)[:2000]}
    reference_name = todo[0].name
    if reference_name not in opened:
        raise ConversionError(f"{path}: ONNX Runtime cannot run this file ({results[reference_name]['error']}), so "
                              "no backend can be checked against it; export it again")
    reference = opened[reference_name]
    calls = {name: caller(p, task) for name, p in opened.items()}
    for name, call in list(calls.items()):
        log.info("%s: parity of %s against %s on %d images", path.name, name, reference_name, len(images))
        try:
            parity = {"agreement": 1.0, "max_abs_diff": {}, "images": len(images), "reference": True} \
                if name == reference_name else compare(calls[reference_name], call, images, info)
        except Exception as exc:  # noqa: BLE001 - a runtime's own error types; the candidate is out, not the run
            log.warning("%s: %s failed on the images: %s", path.name, name, exc)
            results[name] = {**_row(Candidate.parse(name)), "ms": None, "images_per_s": None, "passed": False,
                             "error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
            del calls[name]
            continue
        threshold = MIN_AGREEMENT
        results[name] = {**_row(Candidate.parse(name)), "parity": parity, "min_agreement": threshold,
                         "passed": parity["agreement"] >= threshold}
    low = reference.batch_range[0]
    pixels = [torch.cat([prepare(read_image(p), tuple(info.input_size), info.mean, info.std,
                                 info.size_divisibility).pixels] * low) for p in images]
    log.info("%s: timing %s (%d runs each, batch %d)", path.name, ", ".join(calls), runs, low)
    for name, ms in median_ms(calls, pixels, runs).items():
        results[name].update(ms=ms, images_per_s=round(1000.0 * low / ms, 2) if ms > 0 else None)
    keep.update(opened)
    order = [c.name for c in todo]
    backends = {n: results[n] for n in order}
    return {"reference": reference_name, "backends": backends, "chosen": fastest(backends)}


def caller(predictor: Predictor, task: str) -> Callable[[torch.Tensor], Outputs]:
    """A predictor as parity and timing call it: pixels in (any batch, run in the batches its file takes)."""
    return lambda pixels: run_batch(predictor, pixels, task)


def _row(candidate: Candidate) -> dict[str, Any]:
    """The identity columns of a report row."""
    return {"backend": candidate.backend, "precision": candidate.precision}


def fastest(backends: dict[str, dict[str, Any]], allowed: Callable[[Candidate], bool] = lambda c: True
            ) -> str | None:
    """The fastest row that passed its parity and that `allowed` accepts; None when none qualifies. Times are
    medians to 0.1 ms, so equal ones are common on small inputs: the earlier row wins (ONNX Runtime, the reference,
    comes first), as in `serving_choice`, not the name that sorts first."""
    rows = [(r["ms"], n) for n, r in backends.items() if r.get("passed") and r.get("ms") is not None
            and allowed(Candidate.parse(n))]
    return min(rows, key=lambda r: r[0])[1] if rows else None


def choose(path: str | Path, precision: str = "auto", images: list[Path] | None = None,
           keep: dict[str, Predictor] | None = None) -> Candidate:
    """The fastest passing candidate for `path` at `precision` (auto: any), from its sidecar report when that
    matches, else measured now (nothing to measure where only ONNX Runtime can run the file)."""
    path = Path(path)
    info = onnx_info(path)
    wanted = [c for c in candidates(info.precision) if precision in ("auto", c.precision)]
    if not wanted:
        raise ConversionError(f"no backend here runs {path} (an {info.precision.upper()} file) at {precision}")
    if len(wanted) == 1:
        return wanted[0]
    report = read_report(path) or measure(path, images, keep=keep)
    name = fastest(report["backends"], lambda c: c in wanted)
    if name is None:  # the reference always passes; only a narrower precision can leave nothing
        raise ConversionError(f"{path}: no backend at {precision} passed its parity against ONNX Runtime "
                              f"(see {report_path(path)}); set the precision to auto or fp32")
    return Candidate.parse(name)


# ----------------------------------------------------------------------------- a model version's files together
SERVE_BACKENDS = ("auto", "onnxruntime", "openvino")
SERVE_PRECISIONS = ("auto", "fp32", "bf16", "int8")


def version_report(files: dict[str, Path], int8_passed: bool, int8_verdict: str = "",
                   images: list[Path] | None = None) -> dict[str, Any]:
    """The backends report of a model version: each ONNX file measured (`fp32`; `int8` only where its quantize gate
    passed, so auto never serves a failed INT8 model; a sidecar measured here for the same file is reused) and the
    fastest passing (file, backend) over them all."""
    measured = {kind: read_report(files[kind]) or measure(files[kind], images) for kind in ("fp32", "int8")
                if kind in files and (kind == "fp32" or int8_passed)}
    report: dict[str, Any] = {"machine": machine(), "versions": versions(),
                              "int8_gate": {"passed": int8_passed, "verdict": int8_verdict,
                                            "measured": "int8" in measured}, "files": measured}
    kind, candidate = serving_choice(report, set(files), "auto", "auto", here=False)
    report["chosen"] = {"file": kind, "backend": candidate.name}
    return report


def report_rows(report: dict[str, Any]) -> list[tuple[str, Candidate, dict[str, Any]]]:
    """(file kind, candidate, row) for every measurement of a version report."""
    return [(kind, Candidate.parse(name), row) for kind, rep in report.get("files", {}).items()
            for name, row in rep.get("backends", {}).items()]


def serving_choice(report: dict[str, Any] | None, files: set[str], backend: str = "auto", precision: str = "auto",
                   here: bool = True) -> tuple[str, Candidate]:
    """Which file (fp32 or int8) and candidate answer a request for `backend` at `precision`: the fastest measured
    one that passed its parity and that this machine runs (`here`: openvino importable, bf16 on the CPU), the
    earlier in the report on equal times (the FP32 file's, ONNX Runtime's first); what was asked for where none
    qualifies (an older version without a report, a machine without OpenVINO)."""
    if backend not in SERVE_BACKENDS:
        raise ConversionError(f"params backend={backend!r}: one of {', '.join(SERVE_BACKENDS)}")
    if precision not in SERVE_PRECISIONS:
        raise ConversionError(f"params precision={precision!r}: one of {', '.join(SERVE_PRECISIONS)}")
    rows = [(row["ms"], kind, c) for kind, c, row in report_rows(report or {})
            if kind in files and row.get("passed") and row.get("ms") is not None
            and backend in ("auto", c.backend) and precision in ("auto", c.precision) and (not here or runnable(c))
            and (backend != "auto" or c.backend in auto_backends())]
    if rows:
        _, kind, candidate = min(rows, key=lambda r: r[0])
        return kind, candidate
    kind = "int8" if precision == "int8" else "fp32"
    if kind not in files:
        raise ConversionError("this model version has no INT8 file (its run skipped the quantize stage); predict "
                              "with params={'precision': 'fp32'} or 'auto'")
    if backend == "onnxruntime" and precision == "bf16":
        raise ConversionError("params backend=onnxruntime, precision=bf16: ONNX Runtime's CPU provider runs no bf16; "
                              "ask for backend openvino (or auto), or precision fp32")
    chosen = backend if backend != "auto" else "openvino" if precision == "bf16" else "onnxruntime"
    return kind, Candidate(chosen, "bf16" if precision == "bf16" else kind)
