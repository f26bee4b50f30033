"""The train action: a real two-epoch run on the tiny dataset (TAO's results layout, self-contained checkpoints,
resume, evaluate, seconds), and learning on held-out data with the 24-epoch smoke model (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oneformer.actions.evaluate import evaluate
from oneformer.actions.train import train
from oneformer.artifacts import read_status
from oneformer.errors import CheckpointError
from oneformer.model.checkpoint import LATEST, read_checkpoint, resolve
from oneformer.spec import load_spec

FROZEN = "model.pixel_level_module.encoder"  # the Swin backbone


@pytest.fixture(scope="module")
def short(small_synth: Path, random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two epochs of one optimizer step each (6 images, batch 4), validated on the 4 eval images, starting from
    the random-weights checkpoint with the backbone frozen."""
    results = tmp_path_factory.mktemp("short")
    overrides = [f"results_dir={results}", f"train.pretrained_model={random_checkpoint}", f"train.freeze=[{FROZEN}]"]
    spec = load_spec(small_synth, [*overrides, "train.num_epochs=2"])
    return {"spec_path": small_synth, "results": results, "overrides": overrides, **train(spec)}


def test_training_starts_from_the_given_weights_and_keeps_frozen_ones(short: dict, random_checkpoint: Path) -> None:
    start, end = read_checkpoint(random_checkpoint).state_dict, read_checkpoint(short["checkpoints"][-1]["path"])
    frozen = [k for k in start if k.startswith(FROZEN)]
    trained = [k for k in start if not k.startswith(FROZEN) and k.endswith("class_embed.weight")]
    assert frozen and all(torch.equal(start[k], end.state_dict[k]) for k in frozen)
    assert trained and not any(torch.equal(start[k], end.state_dict[k]) for k in trained)  # two real steps


def test_tao_results_layout(short: dict) -> None:
    train_dir = Path(short["train_dir"])
    names = sorted(p.name for p in train_dir.glob("model_epoch_*.pth"))
    assert names == ["model_epoch_000_step_00001.pth", "model_epoch_001_step_00002.pth"]
    latest = train_dir / LATEST
    assert latest.is_symlink() and latest.resolve().name == names[-1]
    index = json.loads((train_dir / "checkpoints.json").read_text())
    assert [Path(e["path"]).name for e in index] == names and all("mIoU" in e["metrics"] for e in index)
    lines = read_status(train_dir)
    assert [x["status"] for x in lines] == ["STARTED", "RUNNING", "RUNNING", "SUCCESS"]
    assert {"date", "time", "verbosity", "epoch", "max_epoch", "step", "time_per_epoch", "eta", "kpi"} <= set(lines[-2])
    assert {line["verbosity"] for line in lines} == {"INFO"}  # TAO's field; ERROR on a FAILURE line
    assert {"mIoU", "val_loss", "train_loss"} <= set(lines[-2]["kpi"])


def test_checkpoint_is_self_contained_and_weights_only(short: dict) -> None:
    path = Path(short["best"]["path"])
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert "oneformer" in raw and "optimizer_states" in raw  # resumable, and loadable without unpickling code
    ckpt = read_checkpoint(path)
    assert [c["name"] for c in ckpt.label_map][:3] == ["sky", "grass", "road"]
    assert ckpt.hf_config["num_queries"] == 12 and ckpt.spec["train"]["num_epochs"] == 2


def test_best_and_latest_resolution(short: dict, tmp_path: Path) -> None:
    train_dir = Path(short["train_dir"])
    assert resolve("best", train_dir, "evaluate.checkpoint") == Path(short["best"]["path"])
    assert resolve("latest", train_dir, "k") == (train_dir / LATEST).resolve()
    assert resolve(str(train_dir), tmp_path, "k") == Path(short["best"]["path"])  # a train folder means its best
    with pytest.raises(CheckpointError, match="evaluate.checkpoint=best: no checkpoints.json"):
        resolve("best", tmp_path, "evaluate.checkpoint")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(str(tmp_path / "nope.pth"), train_dir, "evaluate.checkpoint")


def test_evaluate_scores_the_best_checkpoint_as_validation_did(short: dict) -> None:
    spec = load_spec(short["spec_path"], [f"results_dir={short['results']}"])
    metrics = evaluate(spec)
    assert metrics["mIoU"] == pytest.approx(short["best"]["metrics"]["mIoU"], abs=1e-6)  # one semantic path
    for key in ("pixel_accuracy", "PQ", "PQ_th", "PQ_st", "SQ", "RQ", "AP", "AP50"):
        assert 0.0 <= metrics[key] <= 1.0
    out = spec.action_dir("evaluate")
    assert json.loads((out / "metrics.json").read_text())["mIoU"] == metrics["mIoU"]
    rows = (out / "per_class_iou.csv").read_text().splitlines()
    assert rows[0] == "class,name,iou" and len(rows) == 7


def test_training_resumes_from_latest(short: dict) -> None:
    before = short["checkpoints"]
    spec = load_spec(short["spec_path"], [*short["overrides"], "train.num_epochs=3"])  # the same run, longer
    result = train(spec)
    assert len(result["checkpoints"]) == len(before) + 1  # one more epoch, not a restart
    assert result["checkpoints"][-1]["step"] == before[-1]["step"] + 1
    assert (Path(result["train_dir"]) / LATEST).resolve().name == "model_epoch_002_step_00003.pth"


@pytest.mark.slow
def test_model_learns_on_heldout_data(trained: dict) -> None:
    best = trained["best"]
    assert best["metrics"]["mIoU"] >= 0.5, trained["checkpoints"]
    first = trained["checkpoints"][0]["metrics"]["mIoU"]
    assert best["metrics"]["mIoU"] > first + 0.2  # learning happened, not a lucky init


@pytest.mark.slow
def test_inference_and_prediction_files_score_the_same(trained: dict) -> None:
    from oneformer.actions.inference import inference

    synth = trained["spec_path"]  # the spec it was trained at

    base = [f"results_dir={trained['results']}", f"inference.images_dir={synth.parent}/eval/images.tar.gz",
            f"inference.results_dir={trained['results']}/preds"]
    for mode in ("semantic", "panoptic", "instance"):
        result = inference(load_spec(synth, [*base, f"inference.mode={mode}"]))
        assert result["images"] == 16
    preds = Path(trained["results"]) / "preds"
    assert len(list((preds / "overlays").glob("*.png"))) == 16
    assert (preds / "panoptic.json").is_file() and (preds / "instances.json").is_file()
    from_files = evaluate(load_spec(synth, [f"results_dir={trained['results']}",
                                            f"evaluate.predictions={preds}", f"evaluate.results_dir={preds}/eval"]))
    from_model = evaluate(load_spec(synth, [f"results_dir={trained['results']}",
                                            f"evaluate.results_dir={preds}/model_eval"]))
    assert from_model["mIoU"] >= 0.5 and from_model["PQ"] > 0.1 and from_model["AP"] > 0.1  # real predictions
    for key in ("mIoU", "PQ", "AP"):
        assert from_files[key] == pytest.approx(from_model[key], abs=1e-6)


def test_taos_verbose_and_swin_use_checkpoint_are_honoured(small_synth: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    spec = load_spec(small_synth, [f"results_dir={tmp_path}", "train.num_epochs=1", "train.verbose=true",
                                   "model.backbone.swin.use_checkpoint=true", "train.optim.lr=0.001",
                                   "train.optim.backbone_multiplier=0.1"])
    with caplog.at_level("INFO"):
        train(spec)
    assert "swin.use_checkpoint: the backbone recomputes its activations in backward" in caplog.text
    groups = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train.verbose")]
    assert len(groups) == 1 and "optimizer AdamW" in groups[0]
    assert "backbone: " in groups[0] and "lr 0.0001 (lr 0.001 x backbone_multiplier 0.1)" in groups[0]
    assert "heads: " in groups[0] and "lr 0.001, weight_decay" in groups[0]
