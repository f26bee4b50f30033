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
    assert result == {"images": 2, "results_dir": str(out), "model": str(random_checkpoint), "mode": mode}
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
