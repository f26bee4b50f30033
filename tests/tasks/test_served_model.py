"""The registered model's backend and precision params on the smoke model's files: auto answers with the fastest
(file, backend) of the version's backends report that passed and that this machine runs, an explicit choice is taken
as asked, and every result's `model` says which backend and file answered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from oneformer.runtime import choice
from oneformer.runtime.choice import version_report
from oneformer.runtime.openvino import has_bf16
from tasks.served_model import SegmentationModel

pytestmark = pytest.mark.usefixtures("every_backend")  # OpenVINO and the choice between backends


@pytest.fixture(scope="module")
def version(random_models: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A version's files as the registry stores them (FP32, INT8, checkpoint, serving config), measured once."""
    folder = tmp_path_factory.mktemp("version")
    files = {"fp32": Path(shutil.copy(random_models["onnx"], folder / "model.onnx")),
             "int8": Path(shutil.copy(random_models["int8"], folder / "model.int8.onnx")),
             "checkpoint": Path(shutil.copy(random_models["checkpoint"], folder / "random.pth"))}
    config = {"task": "semantic", "image_size": [64, 64],
              "thresholds": {"object_mask_threshold": 0.8, "overlap_threshold": 0.8, "topk": 100}}
    (folder / "serving.json").write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as mp:  # measured on every backend (module scope: before every_backend)
        mp.delenv("ONEFORMER_BACKENDS", raising=False)
        (folder / "backends.json").write_text(json.dumps(version_report(files, int8_passed=True)))
    return {**files, "config": folder / "serving.json", "backends": folder / "backends.json"}


def served(files: dict[str, Path], report: dict | None = None, tmp: Path | None = None) -> SegmentationModel:
    """The pyfunc model loaded on the given artifacts (another backends report where given; none where tmp only)."""
    artifacts = dict(files)
    if report is not None or tmp is not None:
        artifacts.pop("backends")
    if report is not None and tmp is not None:
        (tmp / "backends.json").write_text(json.dumps(report))
        artifacts["backends"] = tmp / "backends.json"
    model = SegmentationModel()
    model.load_context(SimpleNamespace(artifacts={k: str(v) for k, v in artifacts.items()}))
    return model


def image() -> np.ndarray:
    """A 64 px synthetic scene."""
    from oneformer.data.synth import make_image

    return make_image(np.random.default_rng(3), 64)[0]


def test_auto_answers_with_the_fastest_passing_file_and_backend_and_names_it(version: dict[str, Path]) -> None:
    report = json.loads(version["backends"].read_text())
    assert set(report["files"]) == {"fp32", "int8"}
    rows = {name: row for rep in report["files"].values() for name, row in rep["backends"].items()}
    assert {"onnxruntime-fp32", "openvino-fp32", "onnxruntime-int8", "openvino-int8"} <= set(rows)
    passing = [(r["ms"], n) for n, r in rows.items() if r["passed"]]  # in the report's order: FP32 file first
    fastest = min(passing, key=lambda r: r[0])[1]  # times to 0.1 ms tie often here: the earlier row wins
    assert report["chosen"]["backend"] == fastest
    model = served(version)
    (out,) = model.predict(None, [image()])
    assert out["model"] == fastest and out["label_map"].shape == (64, 64)
    assert model.predict(None, [image()], params={"backend": "auto", "precision": "auto"})[0]["model"] == fastest


@pytest.mark.parametrize(("params", "answers"), [
    ({"backend": "openvino", "precision": "int8"}, "openvino-int8"),
    ({"backend": "onnxruntime", "precision": "fp32"}, "onnxruntime-fp32"),
    ({"backend": "openvino", "precision": "fp32"}, "openvino-fp32"),
    ({"backend": "onnxruntime", "precision": "int8"}, "onnxruntime-int8"),
    ({"task": "panoptic"}, "torch-fp32"),
])
def test_an_explicit_backend_and_precision_answer_as_asked(version: dict[str, Path], params: dict,
                                                          answers: str) -> None:
    out = served(version).predict(None, [image()], params=params)[0]
    assert out["model"] == answers and out["segment_map"].shape == (64, 64)


def test_the_same_file_answers_alike_on_both_runtimes(version: dict[str, Path]) -> None:
    model = served(version)
    ort, ov = (model.predict(None, [image()], params={"backend": b, "precision": "fp32"})[0]
               for b in ("onnxruntime", "openvino"))
    np.testing.assert_array_equal(ort["label_map"], ov["label_map"])


def test_a_failed_int8_gate_is_never_served_by_auto_but_still_on_request(version: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    files = {k: v for k, v in version.items() if k in ("fp32", "int8")}
    report = version_report(files, int8_passed=False, int8_verdict="mIoU drop 0.2 > 0.03")
    assert set(report["files"]) == {"fp32"} and report["int8_gate"]["verdict"] == "mIoU drop 0.2 > 0.03"
    model = served(version, report, tmp_path)
    # the FP32 file answers: ONNX Runtime or OpenVINO, at bf16 where this CPU has it and its parity passed
    assert model.predict(None, [image()])[0]["model"] in ("onnxruntime-fp32", "openvino-fp32", "openvino-bf16")
    assert model.predict(None, [image()], params={"precision": "int8"})[0]["model"] == "onnxruntime-int8"


def test_a_version_without_a_backends_report_answers_on_onnx_runtime_as_before(version: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    model = served(version, None, tmp_path)
    assert model.predict(None, [image()])[0]["model"] == "onnxruntime-fp32"
    assert model.predict(None, [image()], params={"precision": "int8"})[0]["model"] == "onnxruntime-int8"


def test_what_this_machine_cannot_run_is_filtered_out_or_a_clear_error(version: dict[str, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    report = json.loads(version["backends"].read_text())
    report["files"]["int8"]["backends"]["openvino-int8"].update(ms=0.001, passed=True)  # fastest, if OpenVINO were here
    model = served(version, report, tmp_path)
    with monkeypatch.context() as mp:
        mp.setattr(choice, "openvino_installed", lambda: False)
        assert model.predict(None, [image()])[0]["model"].startswith("onnxruntime-")
    assert model.predict(None, [image()])[0]["model"] == "openvino-int8"
    if not has_bf16():
        with pytest.raises(Exception, match="bf16 needs a CPU with avx512_bf16 or amx_bf16"):
            model.predict(None, [image()], params={"precision": "bf16"})
    with pytest.raises(ValueError, match="params backend='tensorrt': one of auto, onnxruntime, openvino"):
        model.predict(None, [image()], params={"backend": "tensorrt"})
    with pytest.raises(ValueError, match="the ONNX files answer the semantic task only"):
        model.predict(None, [image()], params={"task": "panoptic", "backend": "openvino"})
