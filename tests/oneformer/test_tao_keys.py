"""Every key of TAO's documented OneFormer spec, taken at its word: honoured (its value is what runs), moved to our
name for it, accepted with a one-line note saying why it has no effect here, or refused with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from speckeys import notes_for, one_key

from oneformer.errors import SpecError
from oneformer.spec import MOVED_KEYS, build_spec, flatten

DOCUMENTED = yaml.safe_load((Path(__file__).parent / "data" / "tao_documented_spec.yaml").read_text())
NOTED = {"encryption_key", "model.mode", "dataset.workers", "dataset.dataset_type",
         "dataset.cutmix_prob", "train.optim.monitor_name", "train.distributed_strategy", "evaluate.num_gpus",
         "evaluate.trt_batch_size", "inference.num_gpus", "export.on_cpu", "export.opset_version", "export.gpu_id",
         "gen_trt_engine.opset_version", "gen_trt_engine.tensorrt.calibration.cal_image_dir",
         "gen_trt_engine.tensorrt.calibration.cal_cache_file", "gen_trt_engine.tensorrt.calibration.cal_batch_size",
         "gen_trt_engine.tensorrt.calibration.cal_batches"}
NORMALIZED = {"train.precision": {"fp32": "32"}}  # TAO's legacy spelling, read as Lightning's
# TAO values outside what runs here: refused, the message naming the key and what to do
REFUSED = [("model.backbone.swin.patch_norm", False, "always layer-normalizes"),
           ("model.backbone.swin.qk_scale", 0.5, "head_dim^-0.5"),
           ("model.backbone.swin.out_features", ["res3", "res4", "res5"], "must name the stages of out_indices"),
           ("model.backbone.name", "EfficientViT", "D2SwinTransformer"),
           ("export.input_channel", 1, "3"),
           ("automl.automl_algorithm", "pbt", "choose one of bayesian"),
           ("train.precision", "fp8", "16-mixed")]


@pytest.mark.parametrize("dotted", sorted(flatten(DOCUMENTED)))
def test_every_documented_key_is_honoured_moved_or_noted(dotted: str, caplog: pytest.LogCaptureFixture) -> None:
    value = flatten(DOCUMENTED)[dotted]
    spec, notes = notes_for(dotted, value, caplog)
    if dotted in NOTED:
        assert len(notes) == 1, f"{dotted}: expected one note saying why it has no effect, got {notes}"
        assert "no effect" in notes[0] or "ignored" in notes[0]
        return
    want = NORMALIZED[dotted][value] if dotted in NORMALIZED else value
    if dotted in MOVED_KEYS:
        assert notes == [f"spec: {dotted} is read as {MOVED_KEYS[dotted]}"]
        assert spec.value_at(MOVED_KEYS[dotted]) == want
        return
    assert notes == [], f"{dotted} is honoured, yet noted: {notes}"
    assert spec.value_at(dotted) == want


@pytest.mark.parametrize(("dotted", "value", "reason"), REFUSED)
def test_values_that_cannot_run_here_are_refused_with_the_reason(dotted: str, value: Any, reason: str) -> None:
    with pytest.raises(SpecError) as err:
        build_spec(one_key(dotted, value), "tao.yaml")
    assert dotted.rsplit(".", 1)[0] in str(err.value) and reason in str(err.value)


def test_a_note_fires_only_for_values_without_effect(caplog: pytest.LogCaptureFixture) -> None:
    for dotted, value in [("train.distributed_strategy", "ddp"), ("train.optim.monitor_name", "mIoU"),
                          ("export.on_cpu", True), ("export.opset_version", 17), ("evaluate.num_gpus", 1),
                          ("gen_trt_engine.tensorrt.calibration.cal_batches", 1)]:  # a written spec's defaults
        assert notes_for(dotted, value, caplog)[1] == [], dotted


def test_the_encryption_key_is_never_shown_in_its_note(caplog: pytest.LogCaptureFixture) -> None:
    _, notes = notes_for("encryption_key", "tlt_encode", caplog)
    assert "tlt_encode" not in caplog.text and notes == [notes[0]] and "***" in notes[0]


def test_dataset_image_size_is_the_evaluation_and_inference_size_unless_theirs_are_given() -> None:
    spec = build_spec({"dataset": {"image_size": 512}})
    assert spec.dataset.augmentation.test_min_size == 512 and spec.inference.image_size == [512, 512]
    spec = build_spec({"dataset": {"image_size": 512, "augmentation": {"test_min_size": 320}},
                       "inference": {"image_size": [256, 384]}})
    assert spec.dataset.augmentation.test_min_size == 320 and spec.inference.image_size == [256, 384]


def test_a_matching_qk_scale_is_accepted() -> None:
    assert build_spec(one_key("model.backbone.swin.qk_scale", 32**-0.5)).model.backbone.swin.qk_scale == 32**-0.5
