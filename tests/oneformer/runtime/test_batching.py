"""Batched prediction on every backend: several images in one forward pass give what one at a time gives, in the
batches each model file takes (random weights, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from oneformer.actions.evaluate import evaluate
from oneformer.actions.export import export
from oneformer.data.readers import list_images, read_image
from oneformer.data.staging import stage
from oneformer.runtime import open_predictor
from oneformer.runtime.predictor import Outputs, keep_aspect, run_batch
from oneformer.runtime.segment import Thresholds, segment, segment_batch
from oneformer.spec import load_spec

LOOSE = Thresholds(object_mask_threshold=0.0, overlap_threshold=0.0)  # random weights: keep every segment


def eval_images(small_synth: Path) -> list[np.ndarray]:
    return [read_image(p) for p in list_images(stage(small_synth.parent / "eval" / "images.tar.gz"), "eval")]


class Recorder:
    """A predictor that passes every call on and records the batch sizes it was given."""

    def __init__(self, inner: object, batch_range: tuple[int, int | None] | None = None) -> None:
        self.inner, self.sizes = inner, []
        self.info, self.labels = inner.info, inner.labels
        self.backend, self.precision = inner.backend, inner.precision
        self.batch_range = batch_range or inner.batch_range

    def __call__(self, pixels: torch.Tensor, task: str) -> Outputs:
        self.sizes.append(len(pixels))
        return self.inner(pixels, task)


@pytest.mark.parametrize("kind", ["checkpoint", "onnx", "int8"])
def test_a_batch_segments_like_one_image_at_a_time(kind: str, random_models: dict, small_synth: Path) -> None:
    predictor = open_predictor(random_models[kind])
    images = eval_images(small_synth)[:3]
    task = "semantic" if kind != "checkpoint" else "panoptic"
    batched = segment_batch(predictor, images, task, (64, 64), LOOSE)
    for image, result in zip(images, batched, strict=True):
        alone = segment(predictor, image, task, (64, 64), LOOSE)
        assert result.labels.shape == image.shape[:2]
        assert (result.labels == alone.labels).mean() >= 0.999
        assert [s["category"] for s in result.segments] == [s["category"] for s in alone.segments]


def test_a_fixed_batch_export_takes_any_number_of_images(random_checkpoint: Path, small_synth: Path,
                                                         random_models: dict, tmp_path: Path) -> None:
    spec = load_spec(small_synth, [f"results_dir={tmp_path}", f"export.checkpoint={random_checkpoint}",
                                   "export.input_height=64", "export.input_width=64", "export.batch_size=2"])
    fixed = open_predictor(export(spec)["onnx_file"], backend="onnxruntime")  # the same runtime on both sides
    assert fixed.batch_range == (2, 2) and open_predictor(random_models["onnx"]).batch_range == (1, None)
    pixels = torch.randn(3, 3, 64, 64)
    recorder = Recorder(fixed)
    out = run_batch(recorder, pixels, "semantic")
    assert recorder.sizes == [2, 2] and out.scores.shape[0] == 3  # the third image padded with a zero one, dropped
    dynamic = open_predictor(random_models["onnx"], backend="onnxruntime")(pixels, "semantic")
    torch.testing.assert_close(out.scores, dynamic.scores, atol=1e-4, rtol=1e-4)


def test_batches_are_split_to_what_the_model_takes(random_checkpoint: Path) -> None:
    recorder = Recorder(open_predictor(random_checkpoint), batch_range=(1, 3))
    out = run_batch(recorder, torch.zeros(5, 3, 64, 64), "panoptic")
    assert recorder.sizes == [3, 2] and out.class_logits.shape[0] == out.mask_logits.shape[0] == 5


def test_keep_aspect_ratio_fits_the_image_inside_the_size(random_checkpoint: Path) -> None:
    assert keep_aspect((100, 200), (64, 64)) == (32, 64) and keep_aspect((300, 100), (90, 60)) == (90, 30)
    predictor = Recorder(open_predictor(random_checkpoint))
    wide, square = np.zeros((40, 160, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    results = segment_batch(predictor, [wide, square], "semantic", (64, 64), keep_aspect_ratio=True)
    assert [r.labels.shape for r in results] == [(40, 160), (64, 64)] and predictor.sizes == [2]


def test_evaluate_batches_and_decodes_in_loader_processes(small_synth: Path, random_checkpoint: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.evaluation import score as scoring

    pids = tmp_path / "pids"
    real = scoring.read_image

    def read_and_record(path: Path) -> np.ndarray:
        with pids.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return real(path)

    monkeypatch.setattr(scoring, "read_image", read_and_record)
    recorders: list[Recorder] = []
    monkeypatch.setattr("oneformer.actions.evaluate.open_predictor",
                        lambda *a, **k: recorders.append(Recorder(open_predictor(*a, **k))) or recorders[-1])
    base = [f"results_dir={tmp_path}", f"evaluate.checkpoint={random_checkpoint}",
            "model.task_toggling.instance_on=false", "model.task_toggling.panoptic_on=false"]
    one = evaluate(load_spec(small_synth, [*base, "dataset.test.num_workers=0", "evaluate.batch_size=1"]))
    assert set(pids.read_text().split()) == {str(os.getpid())}
    pids.unlink()
    # evaluate.batch_size empty: the split's batch_size, and its num_workers loader processes
    batched = evaluate(load_spec(small_synth, [*base, "evaluate.batch_size=", "dataset.test.batch_size=3",
                                                    "dataset.test.num_workers=2"]))
    assert recorders[0].sizes == [1, 1, 1, 1] and recorders[1].sizes == [3, 1]
    assert str(os.getpid()) not in set(pids.read_text().split()) and len(set(pids.read_text().split())) == 2
    assert abs(one["mIoU"] - batched["mIoU"]) < 1e-3
