"""Specs of the three networks: how the network is chosen, each one's TAO keys, and another's keys refused."""

from __future__ import annotations

import pytest

from oneformer.errors import SpecError
from oneformer.spec import build_spec, load_spec


def test_the_network_comes_from_model_arch_the_command_or_the_spec_shape() -> None:
    assert build_spec({}).arch == "oneformer"
    assert build_spec({"model": {"arch": "segformer"}}).arch == "segformer"
    assert build_spec({}, arch="mask2former").arch == "mask2former"  # `mask2former train -e spec.yaml`
    assert build_spec({"dataset": {"segment": {"num_classes": 3}}}).arch == "segformer"
    assert build_spec({"model": {"mask_former": {"num_object_queries": 50}}}).arch == "mask2former"
    with pytest.raises(SpecError, match="model.arch is 'segformer' but this is the `mask2former` command"):
        build_spec({"model": {"arch": "segformer"}}, arch="mask2former")
    with pytest.raises(SpecError, match="model.arch: 'maskrcnn' is not one of oneformer, mask2former, segformer"):
        build_spec({"model": {"arch": "maskrcnn"}})


@pytest.mark.parametrize(("arch", "raw", "key"), [
    ("segformer", {"model": {"text_encoder": {"width": 128}}}, "model.text_encoder is a OneFormer key"),
    ("segformer", {"model": {"backbone": {"swin": {"embed_dim": 96}}}},
     "model.backbone.swin is a OneFormer and Mask2Former key"),
    ("mask2former", {"model": {"one_former": {"num_object_queries": 50}}}, "model.one_former is a OneFormer key"),
    ("oneformer", {"model": {"mask_former": {"dec_layers": 4}}}, "model.mask_former is a Mask2Former key"),
    ("oneformer", {"dataset": {"segment": {"img_size": 512}}}, "dataset.segment is a SegFormer key"),
    ("mask2former", {"model": {"decode_head": {"dropout_ratio": 0.2}}}, "model.decode_head is a SegFormer key"),
])
def test_a_key_of_another_network_is_an_error_naming_it(arch: str, raw: dict, key: str) -> None:
    raw = {**raw, "model": {**raw.get("model", {}), "arch": arch}}
    with pytest.raises(SpecError, match=key):
        build_spec(raw)


def test_a_written_spec_of_each_network_loads_back_unchanged() -> None:
    for arch in ("oneformer", "mask2former", "segformer"):
        spec = build_spec({"model": {"arch": arch}, "dataset": {"segment": {"root_dir": "/d"}}
                           if arch == "segformer" else {}})
        assert build_spec(spec.model_dump(mode="json")) == spec  # every section's defaults are repeated in it


def test_mask2former_reads_taos_keys() -> None:
    spec = build_spec({"model": {"arch": "mask2former", "object_mask_threshold": 0.4,
                                 "backbone": {"type": "swin", "swin": {"type": "base"}}},
                       "dataset": {"train": {"type": "coco_panoptic", "img_dir": "/b/images.tar.gz",
                                             "panoptic_json": "/b/annotations_panoptic.json",
                                             "instance_json": "/b/annotations.json",
                                             "panoptic_dir": "/b/images_panoptic.tar.gz"},
                                   "test": {"target_size": [544, 960]}}})
    train = spec.dataset.train
    assert (train.images, train.annotations, train.panoptic, train.format) == (
        "/b/images.tar.gz", "/b/annotations_panoptic.json", "/b/images_panoptic.tar.gz", "coco_panoptic")
    assert spec.dataset.test.target_size == [544, 960]
    swin = spec.model.backbone.swin
    assert (swin.embed_dim, swin.depths, swin.num_heads, swin.window_size) == (128, [2, 2, 18, 2], [4, 8, 16, 32], 12)
    assert spec.model.mode == "panoptic" and spec.model.tasks == ("semantic", "instance", "panoptic")
    assert spec.model.test.object_mask_threshold == 0.4
    assert (spec.export.input_width, spec.export.input_height) == (960, 544)  # TAO's Mask2Former export default
    assert spec.model_name == "mask2former"
    instance = build_spec({"model": {"arch": "mask2former", "mode": "instance"},
                           "dataset": {"val": {"panoptic_json": "/p.json", "instance_json": "/i.json"}}})
    assert instance.dataset.val.annotations == "/i.json"  # the instance model trains and scores on instances
    assert instance.model.tasks == ("semantic", "instance")


def test_segformer_reads_taos_dataset_segment() -> None:
    spec = build_spec({"model": {"arch": "segformer", "backbone": {"type": "mit_b2",
                                                                   "pretrained_backbone_path": "/ptm/mit_b2.pth"}},
                       "dataset": {"segment": {
                           "root_dir": "/data/seg", "num_classes": 3, "img_size": 320, "batch_size": 8,
                           "workers": 1, "augmentation": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                                          "random_flip": {"enable": False}},
                           "palette": [{"seg_class": "background", "rgb": [0, 0, 0], "label_id": 0},
                                       {"seg_class": "road", "rgb": [128, 64, 128], "label_id": 1},
                                       {"seg_class": "lane", "rgb": [255, 255, 0], "label_id": 2}]}}})
    assert spec.num_classes == 3 and spec.num_classes_key == "dataset.segment.num_classes"
    assert (spec.dataset.train.images, spec.dataset.train.annotations, spec.dataset.train.format) == (
        "/data/seg/images/train", "/data/seg/masks/train", "masks")
    assert spec.dataset.test.images == "/data/seg/images/val"  # TAO evaluates on the val folders
    assert spec.inference.images_dir == "/data/seg/images/test"
    assert spec.dataset.quant_calibration_dataset.images_dir == "/data/seg/images/train"
    assert spec.dataset.train.batch_size == 8 and spec.dataset.val.num_workers == 1
    aug = spec.dataset.augmentation
    assert aug.train_crop_size == [320, 320] and aug.test_min_size == 320 and not aug.random_flip
    assert spec.dataset.pixel_mean == [127.5] * 3 and spec.dataset.pixel_std == [63.75] * 3
    assert (spec.export.input_height, spec.export.input_width) == (320, 320)
    assert spec.inference.image_size == [320, 320]
    assert spec.train.pretrained_backbone == "/ptm/mit_b2.pth"
    assert spec.model.tasks == ("semantic",) and spec.model_name == "segformer"


@pytest.mark.parametrize(("raw", "message"), [
    ({"model": {"arch": "segformer", "backbone": {"type": "fan_small_12_p4_hybrid"}}},
     "TAO's FAN backbones are not in transformers"),
    ({"model": {"arch": "segformer", "mode": "panoptic"}}, "SegFormer predicts the semantic task only"),
    ({"model": {"arch": "mask2former", "backbone": {"type": "mit_b0"}}}, "MiT encoders are SegFormer's"),
    ({"model": {"arch": "segformer", "decode_head": {"align_corners": True}}}, "align_corners"),
    ({"model": {"arch": "segformer"}, "dataset": {"segment": {"num_classes": 2, "palette": [
        {"seg_class": "a", "label_id": 0}, {"seg_class": "b", "label_id": 1}, {"seg_class": "c", "label_id": 2}]}}},
     "the palette has 3 classes but num_classes is 2"),
    ({"model": {"arch": "segformer"}, "dataset": {"segment": {"palette": [
        {"seg_class": "a", "label_id": 0, "mapping_class": "sky"}]}}}, "mapping_class \\['sky'\\] names no seg_class"),
])
def test_values_a_network_cannot_take_are_refused_with_the_reason(raw: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec(raw)


def test_model_mode_is_noted_for_oneformer(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", "oneformer.spec"):
        spec = build_spec({"model": {"mode": "instance"}})
    assert spec.model.mode is None and spec.model.tasks == ("semantic", "instance", "panoptic")
    assert "OneFormer predicts all three tasks" in caplog.text


@pytest.mark.parametrize("preset", ["mask2former_smoke", "segformer_smoke"])
def test_the_smoke_presets_load_as_their_network(preset: str) -> None:
    from oneformer.presets import preset_path

    spec = load_spec(preset_path(preset))
    assert spec.arch == preset.removesuffix("_smoke")


def test_segformers_derived_settings_follow_dataset_segment_when_it_changes() -> None:
    from oneformer.spec import with_values

    spec = build_spec({"model": {"arch": "segformer"}, "dataset": {"segment": {"root_dir": "/d", "img_size": 128}}})
    trial = with_values(spec, {"dataset.segment.batch_size": 8, "dataset.segment.img_size": 64})  # an AutoML trial
    assert trial.dataset.train.batch_size == 8 and trial.dataset.augmentation.train_crop_size == [64, 64]
    assert trial.dataset.augmentation.test_min_size == 64
    assert trial.dataset.train.images == "/d/images/train"


def test_segformer_without_its_root_names_the_key_to_set(tmp_path) -> None:  # noqa: ANN001
    from oneformer.errors import DataError
    from oneformer.training.validate import validate_training

    spec = build_spec({"model": {"arch": "segformer"}, "results_dir": str(tmp_path)})
    with pytest.raises(DataError, match="dataset.segment.root_dir is not set"):
        validate_training(spec, deep=False)


def test_another_tools_checkpoint_is_refused_for_the_other_networks(tmp_path) -> None:  # noqa: ANN001
    import torch

    from oneformer.errors import CheckpointError
    from oneformer.model.foreign import read_any

    torch.save({"state_dict": {"sem_seg_head.predictor.class_embed.weight": torch.zeros(2, 2)}}, tmp_path / "m.pth")
    spec = build_spec({"model": {"arch": "mask2former"}})
    with pytest.raises(CheckpointError, match="Other tools' checkpoints are read for OneFormer only; for mask2former"):
        read_any(tmp_path / "m.pth", "evaluate.checkpoint", spec=spec)


def test_latest_is_the_networks_own_link(tmp_path) -> None:  # noqa: ANN001
    from oneformer.model.checkpoint import resolve

    for arch in ("oneformer", "segformer"):
        (tmp_path / f"{arch}.pth").write_bytes(b"x")
        (tmp_path / f"{arch}_model_latest.pth").symlink_to(f"{arch}.pth")
    assert resolve("latest", tmp_path, "export.checkpoint", "segformer").name == "segformer.pth"
    assert resolve("latest", tmp_path, "export.checkpoint", "oneformer").name == "oneformer.pth"


def test_training_pads_to_each_networks_own_divisibility() -> None:
    assert build_spec({"model": {"one_former": {"size_divisibility": 0}}}).size_divisibility == 0  # no padding
    assert build_spec({"model": {"arch": "mask2former", "mask_former": {"size_divisibility": 64}}}
                      ).size_divisibility == 64
    assert build_spec({"model": {"arch": "segformer"}}).size_divisibility == 32
