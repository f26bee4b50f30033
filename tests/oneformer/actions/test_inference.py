"""The inference action on every task and backend: overlays, prediction files in the standard formats, and the
status lines (random weights, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oneformer.actions.inference import inference
from oneformer.artifacts import read_status
from oneformer.spec import load_spec


def run(small_synth: Path, model: Path, out: Path, mode: str) -> dict:
    return inference(load_spec(small_synth, [f"results_dir={out}", f"inference.checkpoint={model}",
                                             f"inference.mode={mode}", "inference.image_size=[64, 64]"]))


@pytest.mark.parametrize("mode", ["semantic", "panoptic", "instance"])
def test_every_task_writes_overlays_and_its_prediction_files(small_synth: Path, random_checkpoint: Path,
                                                              tmp_path: Path, mode: str) -> None:
    result = run(small_synth, random_checkpoint, tmp_path, mode)
    out = tmp_path / "inference"
    assert result == {"images": 2, "results_dir": str(out), "model": str(random_checkpoint), "mode": mode,
                      "backend": "torch-fp32"}
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.stem for p in overlays] == ["inference_00000", "inference_00001"]
    assert all(np.asarray(Image.open(p)).shape == (64, 64, 3) for p in overlays)  # the original image size
    assert set(json.loads((out / "segments.json").read_text())) == {p.stem for p in overlays}
    if mode == "semantic":
        raw = [np.asarray(Image.open(p)) for p in sorted((out / "semantic").glob("*.png"))]
        assert len(raw) == 2 and all(set(np.unique(r)) <= {1, 2, 3, 4, 5, 6} for r in raw)  # raw category ids
    if mode == "panoptic":
        pan = json.loads((out / "panoptic.json").read_text())
        assert len(pan["annotations"]) == 2 and len(pan["categories"]) == 6
        assert all((out / "panoptic" / a["file_name"]).is_file() for a in pan["annotations"])
    if mode == "instance":
        assert isinstance(json.loads((out / "instances.json").read_text()), list)
    assert [s["status"] for s in read_status(out)] == ["STARTED", "SUCCESS"]


def test_exported_and_int8_models_predict_through_the_same_action(small_synth: Path, random_models: dict,
                                                                  tmp_path: Path) -> None:
    for kind in ("onnx", "int8"):
        result = run(small_synth, random_models[kind], tmp_path / kind, "semantic")
        assert result["images"] == 2 and len(list((tmp_path / kind / "inference" / "semantic").glob("*.png"))) == 2


def test_batched_inference_writes_what_one_image_at_a_time_writes(small_synth: Path, random_checkpoint: Path,
                                                                  tmp_path: Path) -> None:
    outs = {}
    for batch in (1, 2):
        inference(load_spec(small_synth, [f"results_dir={tmp_path / str(batch)}", "inference.mode=semantic",
                                          f"inference.checkpoint={random_checkpoint}", f"inference.batch_size={batch}",
                                          "inference.image_size=[48, 64]", "inference.keep_aspect_ratio=true"]))
        outs[batch] = tmp_path / str(batch) / "inference"
    assert json.loads((outs[1] / "segments.json").read_text()) == json.loads((outs[2] / "segments.json").read_text())
    for one, two in zip(sorted((outs[1] / "semantic").glob("*.png")), sorted((outs[2] / "semantic").glob("*.png")),
                        strict=True):
        assert (np.asarray(Image.open(one)) == np.asarray(Image.open(two))).mean() >= 0.999


@pytest.mark.parametrize(("kind", "backend", "answers"), [("onnx", "openvino", "openvino-fp32"),
                                                          ("int8", "onnxruntime", "onnxruntime-int8")])
def test_inference_runs_on_the_backend_the_spec_names_and_says_so(small_synth: Path, random_models: dict,
                                                                  tmp_path: Path, kind: str, backend: str,
                                                                  answers: str) -> None:
    result = inference(load_spec(small_synth, [f"results_dir={tmp_path}", f"inference.checkpoint={random_models[kind]}",
                                               f"inference.backend={backend}", "inference.image_size=[64, 64]",
                                               "inference.mode=semantic"]))
    assert result["backend"] == answers
    lines = read_status(tmp_path / "inference")
    assert [s["backend"] for s in lines] == [answers, answers] and answers in lines[-1]["message"]


@pytest.mark.usefixtures("every_backend")
def test_inference_on_auto_answers_with_a_backend_whose_parity_passed(small_synth: Path, random_models: dict,
                                                                      tmp_path: Path) -> None:
    from oneformer.runtime.choice import read_report, report_path

    model = random_models["onnx"]
    result = inference(load_spec(small_synth, [f"results_dir={tmp_path}", f"inference.checkpoint={model}",
                                               "inference.image_size=[64, 64]", "inference.mode=semantic"]))
    report = read_report(random_models["onnx"])
    assert report is not None, f"{report_path(random_models['onnx'])} was not written"
    assert result["backend"] == report["chosen"] and report["backends"][report["chosen"]]["passed"]


def test_a_backend_the_file_cannot_run_is_an_error_naming_the_key(small_synth: Path, random_models: dict,
                                                                 tmp_path: Path) -> None:
    from oneformer.errors import OneFormerError

    spec = load_spec(small_synth, [f"results_dir={tmp_path}", f"inference.checkpoint={random_models['checkpoint']}",
                                   "inference.backend=openvino"])
    with pytest.raises(OneFormerError, match=r"inference.backend=openvino: .*random.pth is a checkpoint, which runs "
                                             r"on torch; for openvino, export it"):
        inference(spec)
    spec = load_spec(small_synth, [f"results_dir={tmp_path}", f"inference.checkpoint={random_models['int8']}",
                                   "inference.precision=fp32"])
    with pytest.raises(OneFormerError, match=r"inference.precision=fp32: .*model.int8.onnx is an INT8 \(QDQ\) file"):
        inference(spec)
