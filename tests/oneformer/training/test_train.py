"""End to end on CPU: the smoke model learns on synthetic data; evaluate and inference use its best checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from oneformer.checkpoint import LATEST, read_checkpoint, resolve
from oneformer.errors import CheckpointError
from oneformer.spec import load_spec
from oneformer.status import read_status

pytestmark = pytest.mark.slow


def test_model_learns_on_heldout_data(trained: dict) -> None:
    best = trained["best"]
    assert best["metrics"]["mIoU"] >= 0.5, trained["checkpoints"]
    first = trained["checkpoints"][0]["metrics"]["mIoU"]
    assert best["metrics"]["mIoU"] > first + 0.2  # learning happened, not a lucky init


def test_tao_results_layout(trained: dict) -> None:
    train_dir = Path(trained["train_dir"])
    names = sorted(p.name for p in train_dir.glob("model_epoch_*.pth"))
    assert names[0] == "model_epoch_000_step_00016.pth" and len(names) == len(trained["checkpoints"])
    latest = train_dir / LATEST
    assert latest.is_symlink() and latest.resolve().name == names[-1]
    lines = read_status(train_dir)
    assert lines[0]["status"] == "STARTED" and lines[-1]["status"] == "SUCCESS"
    running = [x for x in lines if x["status"] == "RUNNING"]
    assert {"date", "time", "epoch", "max_epoch", "step", "time_per_epoch", "eta", "kpi"} <= set(running[-1])
    assert "mIoU" in running[-1]["kpi"] and "val_loss" in running[-1]["kpi"]


def test_checkpoint_is_self_contained_and_weights_only(trained: dict) -> None:
    path = Path(trained["best"]["path"])
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert "oneformer" in raw
    ckpt = read_checkpoint(path)
    assert [c["name"] for c in ckpt.label_map][:3] == ["sky", "grass", "road"]
    assert ckpt.hf_config["num_queries"] == 12


def test_best_and_latest_resolution(trained: dict, tmp_path: Path) -> None:
    train_dir = Path(trained["train_dir"])
    assert resolve("best", train_dir, "evaluate.checkpoint") == Path(trained["best"]["path"])
    assert resolve("latest", train_dir, "k") == (train_dir / LATEST).resolve()
    with pytest.raises(CheckpointError, match="evaluate.checkpoint=best: no checkpoints.json"):
        resolve("best", tmp_path, "evaluate.checkpoint")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(str(tmp_path / "nope.pth"), train_dir, "evaluate.checkpoint")


def test_evaluate_best_checkpoint(trained: dict) -> None:
    from oneformer.evaluation.evaluate import evaluate

    spec = load_spec(trained["spec_path"], [f"results_dir={trained['results']}"])
    metrics = evaluate(spec)
    assert metrics["mIoU"] == pytest.approx(trained["best"]["metrics"]["mIoU"], abs=1e-4)
    for key in ("pixel_accuracy", "PQ", "PQ_th", "PQ_st", "SQ", "RQ", "AP", "AP50"):
        assert 0.0 <= metrics[key] <= 1.0
    out = spec.action_dir("evaluate")
    assert json.loads((out / "metrics.json").read_text())["mIoU"] == metrics["mIoU"]
    rows = (out / "per_class_iou.csv").read_text().splitlines()
    assert rows[0] == "class,name,iou" and len(rows) == 7


def test_inference_and_prediction_files_score_the_same(trained: dict, synth: Path) -> None:
    from oneformer.evaluation.evaluate import evaluate
    from oneformer.inference import infer

    base = [f"results_dir={trained['results']}", f"inference.images_dir={synth.parent}/eval/images.tar.gz",
            f"inference.results_dir={trained['results']}/preds"]
    for mode in ("semantic", "panoptic", "instance"):
        result = infer(load_spec(synth, [*base, f"inference.mode={mode}"]))
        assert result["images"] == 16
    preds = Path(trained["results"]) / "preds"
    assert len(list((preds / "overlays").glob("*.png"))) == 16
    assert (preds / "panoptic.json").is_file() and (preds / "instances.json").is_file()
    from_files = evaluate(load_spec(synth, [f"results_dir={trained['results']}",
                                            f"evaluate.predictions={preds}", f"evaluate.results_dir={preds}/eval"]))
    from_model = json.loads((Path(trained["results"]) / "evaluate" / "metrics.json").read_text())
    for key in ("mIoU", "PQ", "AP"):
        assert from_files[key] == pytest.approx(from_model[key], abs=1e-6)


def test_training_resumes_from_latest(trained: dict) -> None:
    from oneformer.training.train import train

    before = len(trained["checkpoints"])
    epochs = trained["checkpoints"][-1]["epoch"] + 2
    spec = load_spec(trained["spec_path"], [f"results_dir={trained['results']}", f"train.num_epochs={epochs}"])
    result = train(spec)
    assert len(result["checkpoints"]) == before + 1  # one more epoch, not a restart
    assert result["checkpoints"][-1]["step"] == trained["checkpoints"][-1]["step"] + 16
    assert os.path.exists(Path(result["train_dir"]) / LATEST)
