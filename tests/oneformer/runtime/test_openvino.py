"""OpenVINO as a runtime of our ONNX files: the same answers as ONNX Runtime on the smoke model (fp32 and the INT8 QDQ
file), any batch, f32 when fp32 is asked, and clear errors for bf16 on a CPU without it and without the package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from oneformer.data.readers import list_images
from oneformer.data.staging import stage
from oneformer.errors import ConversionError, OneFormerError
from oneformer.parity import compare
from oneformer.runtime import open_predictor
from oneformer.runtime.choice import caller
from oneformer.runtime.openvino import OpenVinoPredictor, has_bf16
from oneformer.runtime.predictor import describe

pytestmark = pytest.mark.usefixtures("every_backend")  # OpenVINO and the choice between backends


def eval_images(small_synth: Path) -> list[Path]:
    """The tiny dataset's evaluation images."""
    return list_images(stage(small_synth.parent / "eval" / "images.tar.gz"), "eval images")


# fp32: the same arithmetic. int8: the two runtimes round the QDQ graph's integer products differently (OpenVINO
# fuses Q/DQ into its kernels); on random weights, whose class scores nearly tie, a 0.02 difference (2% of the
# scores' range) flips many labels, so the label check is loose here and the chooser's 0.99 is for trained models.
@pytest.mark.parametrize(("kind", "precision", "agreement", "diff"), [("onnx", "fp32", 1.0, 1e-4),
                                                                      ("int8", "int8", 0.75, 0.05)])
def test_openvino_answers_as_onnx_runtime_does_on_the_same_file(random_models: dict, small_synth: Path, kind: str,
                                                                precision: str, agreement: float,
                                                                diff: float) -> None:
    reference = open_predictor(random_models[kind], backend="onnxruntime")
    predictor = open_predictor(random_models[kind], backend="openvino")
    assert isinstance(predictor, OpenVinoPredictor)
    assert (describe(reference), describe(predictor)) == (f"onnxruntime-{precision}", f"openvino-{precision}")
    assert predictor.labels.names == reference.labels.names and predictor.info == reference.info
    report = compare(caller(reference, "semantic"), caller(predictor, "semantic"), eval_images(small_synth),
                     predictor.info)
    assert report["agreement"] >= agreement, report
    assert report["max_abs_diff"]["scores"] < diff, report


def test_fp32_means_f32_and_any_batch_runs(random_models: dict) -> None:
    import openvino.properties.hint as hints

    predictor = OpenVinoPredictor(random_models["onnx"], "fp32", threads=1)
    assert str(predictor.compiled.get_property(hints.inference_precision)) == "<Type: 'float32'>"
    assert predictor.batch_range == (1, None)
    pixels = torch.randn(3, 3, 64, 64)
    batched = predictor(pixels, "semantic").scores
    single = torch.cat([predictor(pixels[i : i + 1], "semantic").scores for i in range(3)])
    assert batched.shape == (3, 6, 16, 16) and float((batched - single).abs().max()) < 1e-4
    with pytest.raises(OneFormerError, match="exported for the semantic task, not panoptic"):
        predictor(pixels[:1], "panoptic")


def test_an_int8_file_runs_at_int8_only(random_models: dict) -> None:
    with pytest.raises(ConversionError, match=r"precision=fp32: .*model.int8.onnx is an INT8 \(QDQ\) file, which "
                                              r"runs at int8; for fp32, open the FP32 file it was quantized from"):
        OpenVinoPredictor(random_models["int8"], "fp32")
    with pytest.raises(ConversionError, match=r"inference.precision=int8: .*model.onnx is an FP32 file; give the "
                                              r"INT8 file"):
        open_predictor(random_models["onnx"], backend="openvino", precision="int8", section="inference")


@pytest.mark.skipif(has_bf16(), reason="checks the message on CPUs without bf16 (this one has it)")
def test_bf16_on_a_cpu_without_it_names_the_missing_feature(random_models: dict) -> None:
    for backend in ("openvino", "auto"):
        with pytest.raises(ConversionError, match=r"bf16 needs a CPU with avx512_bf16 or amx_bf16 .*which this CPU "
                                                  r".* lacks.*Use precision fp32 \(OpenVINO or ONNX Runtime\), the "
                                                  r"INT8 file, or auto"):
            open_predictor(random_models["onnx"], backend=backend, precision="bf16")
    with pytest.raises(ConversionError, match="ONNX Runtime's CPU provider runs no bf16"):
        open_predictor(random_models["onnx"], backend="onnxruntime", precision="bf16", section="evaluate")


@pytest.mark.skipif(not has_bf16(), reason="needs a CPU with bf16 (AVX512-BF16 or AMX)")
def test_bf16_where_the_cpu_has_it_stays_close_to_fp32(random_models: dict, small_synth: Path) -> None:
    reference = open_predictor(random_models["onnx"], backend="onnxruntime")
    predictor = open_predictor(random_models["onnx"], backend="openvino", precision="bf16")
    assert describe(predictor) == "openvino-bf16"
    report = compare(caller(reference, "semantic"), caller(predictor, "semantic"), eval_images(small_synth),
                     predictor.info)
    # bf16 keeps ~3 significant digits of scores near 1; random weights' near-tied labels flip on that, so the
    # bound is on the scores (a trained model's labels are what the chooser's parity gate checks)
    assert report["max_abs_diff"]["scores"] < 0.05 and report["agreement"] >= 0.75, report


def test_without_openvino_the_error_names_the_package_and_onnx_runtime_answers_auto(
        random_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from oneformer.runtime.choice import report_path

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError, as where it is absent
    with pytest.raises(ConversionError, match=r"OpenVINO is not installed \(no `openvino` Python package\): pip "
                                              r"install 'oneformer-pipeline\[openvino\]' \(or pip install openvino\)\. "
                                              r"Meanwhile ONNX Runtime runs the same ONNX files: set "
                                              r"backend=onnxruntime"):
        open_predictor(random_models["onnx"], backend="openvino")
    copy = shutil.copy(random_models["onnx"], tmp_path / "model.onnx")
    assert describe(open_predictor(copy)) == "onnxruntime-fp32"  # auto: the one runtime here, nothing to measure
    assert not report_path(Path(copy)).exists()
