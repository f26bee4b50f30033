"""Spec loading: TAO's sample spec and per-action overrides, overrides, and errors that name the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from oneformer.errors import SpecError
from oneformer.spec import apply_overrides, build_spec, load_spec, parse_override

HERE = Path(__file__).parent


def tao_sample(root: Path) -> dict:
    """TAO's documented sample spec with its data paths pointed at the synthetic dataset."""
    raw = yaml.safe_load((HERE / "data" / "tao_sample_spec.yaml").read_text())
    for split, src in (("train", "train"), ("val", "eval"), ("test", "eval")):
        raw["dataset"][split].update(images=str(root / src / "images.tar.gz"),
                                     annotations=str(root / src / "annotations.json"),
                                     panoptic=str(root / src / "images_panoptic.tar.gz"))
    raw["dataset"]["label_map"] = str(root / "train" / "label_map.json")
    return raw


def test_tao_sample_spec_loads_and_its_paths_check(small_synth: Path) -> None:
    from oneformer.check import check

    spec = build_spec(tao_sample(small_synth.parent))
    assert spec.model.backbone.swin.depths == [2, 2, 18, 2]
    assert spec.model.one_former.num_object_queries == 150
    assert spec.train.precision == "32"
    assert spec.model.test.object_mask_threshold == 0.8
    # TAO's sample names a pretrained checkpoint on NVIDIA's machines: training would refuse it, so check reports it
    assert check(spec, "train") == [f"train.pretrained_model: checkpoint {spec.train.pretrained_model} does not exist"]
    assert check(spec, "evaluate") == [f"evaluate.checkpoint: checkpoint {spec.evaluate.checkpoint} does not exist"]


ACTION_OVERRIDES = {
    "train": {"train.num_gpus": 1, "train.num_epochs": 10, "train.checkpoint_interval": 10,
              "train.validation_interval": 10, "model.sem_seg_head.num_classes": 133, "dataset.contiguous_id": True,
              "train.precision": "32"},
    "evaluate": {"evaluate.checkpoint": "/r/model.pth", "model.sem_seg_head.num_classes": 133,
                 "dataset.contiguous_id": True},
    "export": {"export.checkpoint": "/r/model.pth", "model.sem_seg_head.num_classes": 133, "model.export": True,
               "export.onnx_file": "/results/oneformer_export_640.onnx"},
    "inference": {"inference.checkpoint": "/r/model.pth", "inference.images_dir": "s3://b/inference/images.tar.gz"},
    "quantize": {"quantize.model_path": "/r/model.pth",
                 "dataset.quant_calibration_dataset.images_dir": "s3://b/calibration/images.tar.gz"},
}


@pytest.mark.parametrize("action", sorted(ACTION_OVERRIDES))
def test_tao_per_action_overrides_load(action: str, small_synth: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    spec = build_spec(apply_overrides(tao_sample(small_synth.parent), ACTION_OVERRIDES[action]))
    assert spec.model.sem_seg_head.num_classes == 133 or action in ("inference", "quantize")
    if action == "export":
        assert "model.export is accepted for TAO compatibility and ignored" in caplog.text
        assert spec.export.onnx_file == "/results/oneformer_export_640.onnx"


def test_unknown_key_names_closest_valid_key() -> None:
    with pytest.raises(SpecError) as err:
        load_spec(None, ["train.optim.lrr=0.1", "dataset.trian.images=/x"])
    text = str(err.value)
    assert "train.optim.lrr: unknown key; did you mean train.optim.lr?" in text
    assert "dataset.trian: unknown key; did you mean dataset.train?" in text


def test_type_and_range_errors_name_full_path() -> None:
    with pytest.raises(SpecError) as err:
        load_spec(None, ["train.num_epochs=zero", "model.sem_seg_head.num_classes=0", "train.optim.lr=-1"])
    assert len(err.value.problems) == 3
    text = str(err.value)
    for key in ("train.num_epochs", "model.sem_seg_head.num_classes", "train.optim.lr"):
        assert key in text


@pytest.mark.parametrize(("given", "normalized"), [("fp32", "32"), ("fp16", "16-mixed"), (32, "32"),
                                                   ("bf16-mixed", "bf16-mixed")])
def test_precision_normalized(given: object, normalized: str) -> None:
    assert load_spec(None, {"train.precision": given}).train.precision == normalized


def test_bad_precision_rejected() -> None:
    with pytest.raises(SpecError, match="train.precision"):
        load_spec(None, {"train.precision": "fp8"})


def test_override_values_parse_as_yaml() -> None:
    assert parse_override("train.optim.lr=1e-3") == ("train.optim.lr", 1e-3)
    assert parse_override("train.gpu_ids=[0, 1]") == ("train.gpu_ids", [0, 1])
    assert parse_override("train.activation_checkpoint=true") == ("train.activation_checkpoint", True)
    with pytest.raises(SpecError, match="key=value"):
        parse_override("train.num_epochs")


def test_bad_yaml_file_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(SpecError, match=str(bad)):
        load_spec(bad)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_moved_tao_keys_are_read_where_they_belong() -> None:
    spec = load_spec(None, {"model.object_mask_threshold": 0.4, "train.pretrained_model_path": "/m.pth"})
    assert spec.model.test.object_mask_threshold == 0.4
    assert spec.train.pretrained_model == "/m.pth"
    spec = load_spec(None, {"model.backbone.pretrained_weights": "/swin_tiny.pth"})  # TAO's backbone weights
    assert spec.train.pretrained_backbone == "/swin_tiny.pth"  # loaded into the backbone by train


def test_a_tao_key_and_ours_that_disagree_are_refused() -> None:
    with pytest.raises(SpecError, match=r"model.backbone.pretrained_weights='/a.pth' is TAO's name for "
                                        r"train.pretrained_backbone, which is '/b.pth': keep one"):
        load_spec(None, {"model.backbone.pretrained_weights": "/a.pth", "train.pretrained_backbone": "/b.pth"})
    same = load_spec(None, {"model.backbone.pretrained_weights": "/a.pth", "train.pretrained_backbone": "/a.pth"})
    assert same.train.pretrained_backbone == "/a.pth"


def test_queries_must_exceed_text_context() -> None:
    with pytest.raises(SpecError, match="num_object_queries"):
        load_spec(None, {"model.one_former.num_object_queries": 4, "model.text_encoder.n_ctx": 4})


def test_presets_load() -> None:
    from oneformer.presets import PRESETS, preset_path

    for name in PRESETS:
        load_spec(preset_path(name))


def test_a_bad_runtime_backend_or_precision_names_the_key_and_the_values(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(None, ["inference.backend=openvno", "evaluate.precision=fp16"])
    text = str(err.value)
    assert "inference.backend: Input should be 'auto', 'torch', 'onnxruntime', 'openvino' or 'tensorrt' (got " \
           "'openvno')" in text
    assert "evaluate.precision: Input should be 'auto', 'fp32', 'bf16' or 'int8' (got 'fp16')" in text
    with caplog.at_level(logging.WARNING):
        spec = load_spec(None, ["inference.backend=openvino", "inference.precision=FP32",
                                "evaluate.precision=bfloat16"])
    assert (spec.inference.backend, spec.inference.precision, spec.evaluate.precision) == ("openvino", "fp32", "bf16")
    assert "inference.precision 'FP32' normalized to 'fp32'" in caplog.text
    assert (load_spec().inference.backend, load_spec().evaluate.precision) == ("auto", "auto")
