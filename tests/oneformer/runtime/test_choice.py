"""The fastest backend whose parity passed: measured on the smoke model into a sidecar keyed by file, machine and
runtimes, reused while those hold, never a failed parity; and the registered model's pick over a version's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from oneformer.errors import ConversionError
from oneformer.runtime import choice, open_predictor
from oneformer.runtime.choice import Candidate, choose, measure, read_report, report_key, report_path, serving_choice
from oneformer.runtime.predictor import describe

pytestmark = pytest.mark.usefixtures("every_backend")  # OpenVINO and the choice between backends


@pytest.fixture
def onnx_file(random_models: dict, tmp_path: Path) -> Path:
    """A copy of the smoke model's FP32 export in a folder of its own (its sidecar is this test's)."""
    return Path(shutil.copy(random_models["onnx"], tmp_path / "model.onnx"))


def sidecar(path: Path, rows: dict[str, tuple[float, bool]]) -> None:
    """A sidecar report for `path` on this machine with the given (ms, passed) per backend."""
    backends = {name: {"backend": Candidate.parse(name).backend, "precision": Candidate.parse(name).precision,
                       "ms": ms, "images_per_s": 1000 / ms, "passed": passed,
                       "parity": {"agreement": 1.0 if passed else 0.5}} for name, (ms, passed) in rows.items()}
    report = {"file": path.name, "key": report_key(path), "backends": backends, "chosen": choice.fastest(backends)}
    report_path(path).write_text(json.dumps(report))


def test_a_measurement_records_every_backend_and_is_reused(onnx_file: Path, small_synth: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.data.readers import list_images
    from oneformer.data.staging import stage

    images = list_images(stage(small_synth.parent / "eval" / "images.tar.gz"), "eval images")
    report = measure(onnx_file, images, runs=2)
    on_disk = json.loads(report_path(onnx_file).read_text())
    assert on_disk == report and report["key"] == report_key(onnx_file)
    assert set(report["key"]) == {"sha256", "machine", "versions", "min_agreement"}
    assert report["key"]["versions"]["openvino"]
    assert list(report["backends"]) == [c.name for c in choice.candidates("fp32")]
    assert {"onnxruntime-fp32", "openvino-fp32"} <= set(report["backends"])
    for row in report["backends"].values():
        assert row["ms"] > 0 and row["images_per_s"] > 0 and row["parity"]["images"] == 2
        assert row["passed"] == (row["parity"]["agreement"] >= row["min_agreement"])
    assert report["backends"]["openvino-fp32"]["passed"]  # the same fp32 arithmetic: the same labels
    assert report["images"] == [str(p) for p in images[:2]]
    passing = {n: r["ms"] for n, r in report["backends"].items() if r["passed"]}
    assert report["chosen"] in passing and passing[report["chosen"]] == min(passing.values())  # ties: either

    monkeypatch.setattr(choice, "measure", lambda *a, **k: pytest.fail("measured again though the sidecar holds"))
    assert choose(onnx_file) == Candidate.parse(report["chosen"])
    assert describe(open_predictor(onnx_file)) == report["chosen"]


def test_the_fastest_passing_backend_is_chosen_and_a_failed_parity_never(onnx_file: Path) -> None:
    sidecar(onnx_file, {"onnxruntime-fp32": (10.0, True), "openvino-fp32": (5.0, True)})
    assert choose(onnx_file) == Candidate("openvino", "fp32")
    sidecar(onnx_file, {"onnxruntime-fp32": (10.0, True), "openvino-fp32": (1.0, False)})
    assert choose(onnx_file) == Candidate("onnxruntime", "fp32")
    assert describe(open_predictor(onnx_file)) == "onnxruntime-fp32"
    sidecar(onnx_file, {"onnxruntime-fp32": (10.0, True), "openvino-fp32": (5.0, True)})
    assert choose(onnx_file, precision="fp32") == Candidate("openvino", "fp32")


def test_evaluate_scores_the_files_own_precision_where_inference_may_answer_in_bf16(
        onnx_file: Path, small_synth: Path, tmp_path: Path) -> None:
    from oneformer.actions.evaluate import evaluate
    from oneformer.spec import load_spec

    bf16 = "openvino-bf16" in [c.name for c in choice.candidates("fp32")]  # this CPU has AVX512-BF16 or AMX
    sidecar(onnx_file, {"onnxruntime-fp32": (10.0, True), "openvino-fp32": (9.0, True),
                        **({"openvino-bf16": (1.0, True)} if bf16 else {})})
    base = [f"results_dir={tmp_path}", f"evaluate.checkpoint={onnx_file}", "evaluate.max_images=1"]
    evaluate(load_spec(small_synth, base))
    assert json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["backend"] == "openvino-fp32"
    assert describe(open_predictor(onnx_file)) == ("openvino-bf16" if bf16 else "openvino-fp32")  # inference's auto
    if bf16:  # asked for, evaluate scores in bf16 too
        evaluate(load_spec(small_synth, [*base, "evaluate.precision=bf16", f"evaluate.results_dir={tmp_path}/b"]))
        assert json.loads((tmp_path / "b" / "metrics.json").read_text())["backend"] == "openvino-bf16"


def test_a_changed_file_or_machine_is_measured_again(onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar(onnx_file, {"onnxruntime-fp32": (10.0, True), "openvino-fp32": (5.0, True)})
    assert read_report(onnx_file) is not None
    model = onnx.load(str(onnx_file))
    model.doc_string = "re-exported"
    onnx.save(model, str(onnx_file))
    assert read_report(onnx_file) is None  # another sha256
    sidecar(onnx_file, {"onnxruntime-fp32": (10.0, True), "openvino-fp32": (5.0, True)})
    monkeypatch.setattr(choice, "machine", lambda: {"cpu": "another CPU", "flags": ["avx512_bf16"], "cores": 64})
    assert read_report(onnx_file) is None
    measured: list[Path] = []
    monkeypatch.setattr(choice, "measure", lambda path, images=None, keep=None: measured.append(path) or {
        "backends": {"onnxruntime-fp32": {"ms": 3.0, "passed": True}}})
    assert choose(onnx_file) == Candidate("onnxruntime", "fp32") and measured == [onnx_file]


def test_an_unwritable_folder_still_measures_and_answers(onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, data: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(choice, "write_json", refuse)
    report = measure(onnx_file, runs=1)
    assert report["images"] == ["synthetic scenes"] and report["chosen"] and not report_path(onnx_file).exists()


def version(rows: dict[str, dict[str, tuple[float, bool]]]) -> dict:
    """A version's backends report with (ms, passed) per backend per file kind."""
    return {"files": {kind: {"backends": {n: {"ms": ms, "passed": ok} for n, (ms, ok) in r.items()}}
                      for kind, r in rows.items()}}


def test_equal_times_go_to_the_earlier_row_for_a_file_and_for_a_version() -> None:
    """Times are medians to 0.1 ms, so small models tie: a file's report and a version's pick agree on the winner
    (the earlier row), whatever the names sort to (a version's report once named another backend than it served)."""
    one_file = {"onnxruntime-fp32": {"ms": 3.0, "passed": True}, "openvino-fp32": {"ms": 1.2, "passed": True},
                "openvino-bf16": {"ms": 1.2, "passed": True}}
    assert choice.fastest(one_file) == "openvino-fp32"
    tied = version({"fp32": {"onnxruntime-fp32": (3.0, True), "openvino-bf16": (1.2, True)},
                    "int8": {"onnxruntime-int8": (1.2, True)}})
    assert serving_choice(tied, {"fp32", "int8"}, here=False) == ("fp32", Candidate("openvino", "bf16"))


def test_the_served_model_picks_the_fastest_passing_file_and_backend_this_machine_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    report = version({"fp32": {"onnxruntime-fp32": (20.0, True), "openvino-fp32": (19.0, True),
                               "openvino-bf16": (8.0, True)},
                      "int8": {"onnxruntime-int8": (12.0, True), "openvino-int8": (9.0, True)}})
    files = {"fp32", "int8"}
    monkeypatch.setattr(choice, "bf16_here", lambda: False)  # measured on a machine with bf16, served on one without
    assert serving_choice(report, files) == ("int8", Candidate("openvino", "int8"))
    assert serving_choice(report, files, here=False) == ("fp32", Candidate("openvino", "bf16"))
    assert serving_choice(report, files, precision="fp32") == ("fp32", Candidate("openvino", "fp32"))
    assert serving_choice(report, files, backend="onnxruntime") == ("int8", Candidate("onnxruntime", "int8"))
    assert serving_choice(report, {"fp32"}) == ("fp32", Candidate("openvino", "fp32"))  # the INT8 file is not there
    failed = version({"fp32": {"onnxruntime-fp32": (20.0, True)}, "int8": {"openvino-int8": (1.0, False)}})
    assert serving_choice(failed, files) == ("fp32", Candidate("onnxruntime", "fp32"))
    monkeypatch.setattr(choice, "openvino_installed", lambda: False)
    assert serving_choice(report, files) == ("int8", Candidate("onnxruntime", "int8"))
    # no report (a version registered before reports existed): what was asked, on ONNX Runtime by default
    assert serving_choice(None, files) == ("fp32", Candidate("onnxruntime", "fp32"))
    assert serving_choice(None, files, precision="int8") == ("int8", Candidate("onnxruntime", "int8"))
    assert serving_choice(None, files, "openvino", "bf16") == ("fp32", Candidate("openvino", "bf16"))
    with pytest.raises(ConversionError, match="no INT8 file"):
        serving_choice(None, {"fp32"}, precision="int8")
    with pytest.raises(ConversionError, match="params backend='tensorrt': one of auto, onnxruntime, openvino"):
        serving_choice(report, files, backend="tensorrt")
    with pytest.raises(ConversionError, match="ONNX Runtime's CPU provider runs no bf16"):
        serving_choice(report, files, "onnxruntime", "bf16")


def test_oneformer_backends_narrows_what_auto_measures_and_chooses(onnx_file: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with OpenVINO installed but not wanted for serving: auto measures and answers ONNX Runtime only,
    an explicit backend is still honoured, and a report measured so is measured again once OpenVINO is allowed."""
    from oneformer.errors import OneFormerError

    sidecar(onnx_file, {"onnxruntime-fp32": (10.0, True), "openvino-fp32": (5.0, True)})
    monkeypatch.setenv("ONEFORMER_BACKENDS", "onnxruntime")
    assert choice.candidates("fp32") == [Candidate("onnxruntime", "fp32")]
    assert choose(onnx_file) == Candidate("onnxruntime", "fp32")
    assert describe(open_predictor(onnx_file)) == "onnxruntime-fp32"
    report = version({"fp32": {"onnxruntime-fp32": (20.0, True), "openvino-fp32": (5.0, True)}})
    assert serving_choice(report, {"fp32"}) == ("fp32", Candidate("onnxruntime", "fp32"))
    assert serving_choice(report, {"fp32"}, backend="openvino") == ("fp32", Candidate("openvino", "fp32"))

    measured = measure(onnx_file, runs=1)
    assert list(measured["backends"]) == ["onnxruntime-fp32"] and read_report(onnx_file) is not None
    monkeypatch.setenv("ONEFORMER_BACKENDS", " onnxruntime , openvino ")
    assert read_report(onnx_file) is None  # measured without OpenVINO, which auto may choose now
    assert Candidate("openvino", "fp32") in choice.candidates("fp32")

    monkeypatch.setenv("ONEFORMER_BACKENDS", "onnxruntime,tensorrt")
    with pytest.raises(OneFormerError, match=r"\$ONEFORMER_BACKENDS='onnxruntime,tensorrt': 'tensorrt' is not"):
        choose(onnx_file)
