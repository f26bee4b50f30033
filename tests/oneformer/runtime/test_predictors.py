"""One predictor over every backend: a checkpoint, its ONNX export and its INT8 model take the same prepared image
and give the same kind of answer (random weights, seconds); TensorRT engines need TensorRT and a GPU."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oneformer.data.readers import list_images, read_image
from oneformer.errors import OneFormerError
from oneformer.runtime import open_predictor
from oneformer.runtime.predictor import ModelInfo, describe, prepare
from oneformer.spec import PIXEL_MEAN, PIXEL_STD

CLASSES = ["sky", "grass", "road", "circle", "square", "triangle"]


@pytest.fixture(scope="module")
def models(random_models: dict) -> dict[str, Path]:
    """The random checkpoint, its semantic ONNX export at 64 px, and that export quantized to INT8."""
    return {k: random_models[k] for k in ("checkpoint", "onnx", "int8")}


def test_open_predictor_picks_the_backend_from_the_file(models: dict[str, Path]) -> None:
    kinds = {name: type(open_predictor(path, backend="auto" if name == "checkpoint" else "onnxruntime")).__name__
             for name, path in models.items()}
    assert kinds == {"checkpoint": "TorchPredictor", "onnx": "OnnxPredictor", "int8": "OnnxPredictor"}
    answers = {name: describe(open_predictor(path, backend=backend)) for name, path, backend in (
        ("checkpoint", models["checkpoint"], "torch"), ("onnx", models["onnx"], "openvino"),
        ("int8", models["int8"], "openvino"))}
    assert answers == {"checkpoint": "torch-fp32", "onnx": "openvino-fp32", "int8": "openvino-int8"}


@pytest.mark.parametrize(("model", "backend", "message"), [
    ("checkpoint", "onnxruntime", "is a checkpoint, which runs on torch; for onnxruntime, export it"),
    ("checkpoint", "tensorrt", "is a checkpoint, which runs on torch; for tensorrt, build an engine"),
    ("onnx", "torch", "is an ONNX file, which runs on onnxruntime or openvino; give the checkpoint for torch"),
    ("onnx", "tensorrt", "is an ONNX file, which runs on onnxruntime or openvino; for TensorRT, build an engine"),
    ("onnx", "tensor-rt", "evaluate.backend='tensor-rt': one of auto, torch, onnxruntime, openvino, tensorrt")])
def test_a_backend_that_cannot_run_the_file_is_an_error_naming_the_key(models: dict[str, Path], model: str,
                                                                       backend: str, message: str) -> None:
    with pytest.raises(OneFormerError, match=re.escape(message)):
        open_predictor(models[model], backend=backend, section="evaluate")


def test_every_model_file_carries_what_using_it_needs(models: dict[str, Path]) -> None:
    eager, fp32, int8 = (open_predictor(models[k]) for k in ("checkpoint", "onnx", "int8"))
    assert (eager.info.task, eager.info.input_size) == (None, None)  # a checkpoint answers any task at any size
    assert (fp32.info.task, fp32.info.input_size, fp32.info.output) == ("semantic", [64, 64], "scores")
    assert (fp32.info.precision, int8.info.precision) == ("fp32", "int8")
    for p in (eager, fp32, int8):
        assert p.labels.names == CLASSES and p.info.mean == list(PIXEL_MEAN) and p.info.std == list(PIXEL_STD)


def test_the_same_image_gets_the_same_answer_from_checkpoint_and_export(models: dict[str, Path],
                                                                        small_synth: Path) -> None:
    image = read_image(_first_eval_image(small_synth))
    answers, scores = {}, {}
    for name, path in models.items():
        p = open_predictor(path, backend="auto" if name == "checkpoint" else "onnxruntime")  # not bf16's auto
        prep = prepare(image, (64, 64), p.info.mean, p.info.std, p.info.size_divisibility)
        out = p(prep.pixels, "semantic")
        scores[name], answers[name] = out.scores, out.semantic(0, prep)
        assert answers[name].shape == image.shape[:2] and answers[name].dtype == np.int32
    assert float((scores["checkpoint"] - scores["onnx"]).abs().max()) < 1e-3
    assert (answers["checkpoint"] == answers["onnx"]).mean() >= 0.99
    assert scores["int8"].shape == scores["onnx"].shape


def _first_eval_image(small_synth: Path) -> Path:
    from oneformer.data.staging import stage

    return list_images(stage(small_synth.parent / "eval" / "images.tar.gz"), "eval images")[0]


def test_an_exported_graph_answers_only_its_task(models: dict[str, Path]) -> None:
    onnx = open_predictor(models["onnx"])
    with pytest.raises(OneFormerError, match="exported for the semantic task, not panoptic"):
        onnx(torch.zeros(1, 3, 64, 64), "panoptic")
    eager = open_predictor(models["checkpoint"])
    out = eager(torch.zeros(2, 3, 64, 64), "panoptic")
    assert out.class_logits.shape == (2, 12, 7) and out.mask_logits.shape == (2, 12, 16, 16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without TensorRT/CUDA")
def test_opening_an_engine_loads_no_exporter_and_names_what_is_missing(tmp_path: Path) -> None:
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"not built here")
    info = ModelInfo(task="semantic", output="scores", input_size=[64, 64], label_map=[{"id": 1, "name": "a"}])
    (tmp_path / "model.fp16.engine.json").write_text(info.to_json())
    script = ("import sys, json\nfrom oneformer.runtime import open_predictor\ntry:\n"
              f"    open_predictor({str(engine)!r})\nexcept Exception as exc:\n    error = str(exc)\n"
              "print(json.dumps({'error': error, 'modules': sorted(m for m in sys.modules "
              "if m.startswith(('oneformer', 'onnx')))}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    assert "TensorRT is not installed" in result["error"] or "no CUDA device" in result["error"]
    assert not [m for m in result["modules"] if m.startswith(("oneformer.actions", "onnx"))], result["modules"]


def test_oneformer_threads_caps_each_predictor_and_a_bad_value_names_the_variable(
        random_models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.errors import OneFormerError
    from oneformer.runtime.devices import cpu_threads
    from oneformer.runtime.onnx import OnnxPredictor

    monkeypatch.setenv("ONEFORMER_THREADS", "1")
    predictor = OnnxPredictor(random_models["onnx"])
    assert predictor.session.get_session_options().intra_op_num_threads == 1
    assert cpu_threads(3) == 3  # an explicit count wins
    monkeypatch.setenv("ONEFORMER_THREADS", "two")
    with pytest.raises(OneFormerError, match=r"\$ONEFORMER_THREADS='two'"):
        OnnxPredictor(random_models["onnx"])
