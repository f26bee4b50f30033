"""ONNX export from the trained smoke checkpoint: every task, parity, metadata, and the failure paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from oneformer.errors import CheckpointError, ConversionError, DataError
from oneformer.export import export
from oneformer.runtime import OnnxPredictor, TorchPredictor
from oneformer.spec import load_spec

pytestmark = pytest.mark.slow


def spec_for(trained: dict, *overrides: str):  # noqa: ANN201
    return load_spec(trained["spec_path"], [f"results_dir={trained['results']}", *overrides])


@pytest.mark.parametrize(("task", "output", "names"), [
    ("semantic", "scores", ["scores"]),
    ("semantic", "labels", ["labels"]),
    ("panoptic", "scores", ["class_logits", "mask_logits"]),
    ("instance", "scores", ["class_logits", "mask_logits"]),
])
def test_export_each_task_matches_pytorch(trained: dict, tmp_path: Path, task: str, output: str,
                                          names: list[str]) -> None:
    onnx_file = tmp_path / f"{task}-{output}.onnx"
    report = export(spec_for(trained, f"export.task={task}", f"export.semantic_output={output}",
                             f"export.onnx_file={onnx_file}"))
    assert report["passed"] and report["agreement"] >= 0.99 and report["images"] == 8
    assert all(v < 1e-3 for v in report["max_abs_diff"].values())
    assert json.loads((tmp_path / f"{onnx_file.name}.report.json").read_text()) == report
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["task"] == task and meta["input_size"] == "128x128"
    assert meta["classes"].split(",")[:3] == ["sky", "grass", "road"]
    assert json.loads(meta["oneformer"])["source_sha256"] == report["source_sha256"]
    predictor = OnnxPredictor(onnx_file)
    assert [o.name for o in predictor.session.get_outputs()] == names
    out = predictor(torch.zeros(3, 3, 128, 128), task)  # the batch axis is dynamic
    first = out.labels if out.labels is not None else (out.scores if out.scores is not None else out.class_logits)
    assert first.shape[0] == 3


def test_onnx_and_checkpoint_evaluate_alike(trained: dict, tmp_path: Path) -> None:
    from oneformer.evaluation.evaluate import evaluate
    from oneformer.inference import infer

    onnx_file = tmp_path / "model.onnx"
    export(spec_for(trained, f"export.onnx_file={onnx_file}"))
    by_onnx = evaluate(spec_for(trained, f"evaluate.checkpoint={onnx_file}", f"evaluate.results_dir={tmp_path}/e1"))
    by_torch = evaluate(spec_for(trained, f"evaluate.checkpoint={trained['best']['path']}",
                                 f"evaluate.results_dir={tmp_path}/e2"))
    assert by_onnx["mIoU"] == pytest.approx(by_torch["mIoU"], abs=2e-3) and by_onnx["mIoU"] >= 0.5
    result = infer(spec_for(trained, f"inference.checkpoint={onnx_file}", "inference.mode=semantic",
                            f"inference.images_dir={Path(trained['spec_path']).parent}/inference/images.tar.gz",
                            f"inference.results_dir={tmp_path}/inf"))
    assert result["images"] == 4 and len(list((tmp_path / "inf" / "overlays").glob("*.png"))) == 4
    with pytest.raises(Exception, match="exported for the semantic task"):
        infer(spec_for(trained, f"inference.checkpoint={onnx_file}", "inference.mode=panoptic",
                       f"inference.images_dir={Path(trained['spec_path']).parent}/inference/images.tar.gz",
                       f"inference.results_dir={tmp_path}/inf2"))


def test_existing_output_is_an_error_unless_overwrite(trained: dict, tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_text("keep me")
    with pytest.raises(ConversionError, match=f"export.onnx_file: {onnx_file} already exists.*export.overwrite"):
        export(spec_for(trained, f"export.onnx_file={onnx_file}"))
    assert onnx_file.read_text() == "keep me"
    export(spec_for(trained, f"export.onnx_file={onnx_file}", "export.overwrite=true"))
    assert onnx.load(str(onnx_file)).graph.input[0].name == "pixel_values"


def test_failed_export_leaves_no_file(trained: dict, tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    no_images = ["dataset.val.images=null", "dataset.test.images=null", "inference.images_dir=null",
                 "dataset.quant_calibration_dataset.images_dir=null"]
    with pytest.raises(DataError, match="needs real images"):
        export(spec_for(trained, f"export.onnx_file={onnx_file}", *no_images))
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_and_bad_size_are_clear(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="export.checkpoint: checkpoint .*nope.pth does not exist"):
        export(spec_for(trained, f"export.checkpoint={tmp_path}/nope.pth"))
    with pytest.raises(Exception, match="export.input_height=100 is not a multiple of 32"):
        export(spec_for(trained, "export.input_height=100", f"export.onnx_file={tmp_path}/x.onnx"))


def test_torch_predictor_scores_are_what_the_graph_computes(trained: dict) -> None:
    torch_model = TorchPredictor(trained["best"]["path"], device="cpu")
    x = torch.randn(1, 3, 128, 128)
    scores = torch_model(x, "semantic").scores
    logits = torch_model(x, "panoptic")
    assert scores.shape == (1, 6, 32, 32) and logits.class_logits.shape == (1, 12, 7)
    assert np.isfinite(scores.numpy()).all()
