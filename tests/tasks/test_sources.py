"""Which files each action stages: TAO's per-action table, from the sources that are set."""

from __future__ import annotations

from tasks.sources import DataSources, required


def test_train_stages_tao_files_from_train_and_eval() -> None:
    got = required("train", DataSources(train="s3://b/data/train/", eval="s3://b/data/eval"))
    assert got == {
        "dataset.train.images": "s3://b/data/train/images.tar.gz",
        "dataset.train.annotations": "s3://b/data/train/annotations.json",
        "dataset.label_map": "s3://b/data/train/label_map.json",
        "dataset.train.panoptic": "s3://b/data/train/images_panoptic.tar.gz",
        "dataset.val.images": "s3://b/data/eval/images.tar.gz",
        "dataset.val.annotations": "s3://b/data/eval/annotations.json",
        "dataset.val.panoptic": "s3://b/data/eval/images_panoptic.tar.gz",
        "dataset.test.images": "s3://b/data/eval/images.tar.gz",
    }


def test_inference_reads_test_images_from_the_inference_source() -> None:
    got = required("inference", DataSources(train="t", eval="e", inference="s3://b/inf"))
    assert got["dataset.test.images"] == got["inference.images_dir"] == "s3://b/inf/images.tar.gz"
    assert got["dataset.val.images"] == "e/images.tar.gz"


def test_quantize_adds_calibration_and_unset_sources_stage_nothing() -> None:
    got = required("quantize", DataSources(calibration="file:///data/cal"))
    assert got == {"dataset.quant_calibration_dataset.images_dir": "file:///data/cal/images.tar.gz"}
    assert required("evaluate", DataSources()) == {}
