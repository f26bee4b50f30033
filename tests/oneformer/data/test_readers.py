"""Readers and validation: the three annotation formats agree, and bad data fails before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from oneformer.data.labelmap import LabelMap
from oneformer.data.readers import load_target, read_split
from oneformer.data.targets import semantic_map
from oneformer.errors import DataError


def labels(root: Path) -> LabelMap:
    return LabelMap.read(root / "train" / "label_map.json")


def test_three_formats_give_the_same_semantic_ground_truth(small_synth: Path) -> None:
    root = small_synth.parent
    lm = labels(root)
    pan = read_split(str(root / "train/annotations.json"), str(root / "train/images.tar.gz"),
                     str(root / "train/images_panoptic.tar.gz"), "auto", lm, "dataset.train")
    inst = read_split(str(root / "train/instances.json"), str(root / "train/images.tar.gz"), None, "auto", lm, "t")
    sem = read_split(str(root / "train/semantic.jsonl"), str(root / "train/images.tar.gz"), None, "auto", lm, "t")
    assert [r.kind for r in (pan[0], inst[0], sem[0])] == ["coco_panoptic", "coco", "semantic"]
    assert len(pan) == len(inst) == len(sem) == 6
    for p, i, s in zip(pan, inst, sem):
        p_sem = semantic_map(*load_target(p, lm))
        s_sem = semantic_map(*load_target(s, lm))
        np.testing.assert_array_equal(p_sem, s_sem)
        i_ids, i_segs = load_target(i, lm)
        things = lm.thing_mask[p_sem.clip(0, 5)] & (p_sem != 255)
        np.testing.assert_array_equal(semantic_map(i_ids, i_segs)[things], p_sem[things])


def _copy_train(root: Path, tmp: Path) -> Path:
    dst = tmp / "train"
    shutil.copytree(root / "train", dst)
    return dst


def test_class_beyond_num_classes_names_id_and_setting(small_synth: Path) -> None:
    with pytest.raises(DataError, match=r"category id 6 \('triangle'\).*num_classes=5"):
        labels(small_synth.parent).check_fits(5, "dataset.label_map")


def test_category_id_zero_rejected(tmp_path: Path) -> None:
    (tmp_path / "lm.json").write_text(json.dumps([{"id": 0, "name": "bg"}]))
    with pytest.raises(DataError, match="category id 0.*must be > 0"):
        LabelMap.read(tmp_path / "lm.json")


def _read_edited(root: Path, tmp: Path, edit) -> None:  # noqa: ANN001
    """Copy the train split, apply `edit` to its annotations, and read it."""
    train = _copy_train(root, tmp)
    data = json.loads((train / "annotations.json").read_text())
    edit(data)
    (train / "annotations.json").write_text(json.dumps(data))
    read_split(str(train / "annotations.json"), str(train / "images.tar.gz"),
               str(train / "images_panoptic.tar.gz"), "auto", labels(root), "dataset.train")


def test_unknown_category_in_annotations(small_synth: Path, tmp_path: Path) -> None:
    def edit(data: dict) -> None:
        data["annotations"][0]["segments_info"][0]["category_id"] = 42

    with pytest.raises(DataError, match="category id 42 is not in the label map"):
        _read_edited(small_synth.parent, tmp_path, edit)


def test_missing_image_named(small_synth: Path, tmp_path: Path) -> None:
    def edit(data: dict) -> None:
        data["images"][1]["file_name"] = "nowhere.jpg"

    with pytest.raises(DataError, match="missing file .*nowhere.jpg"):
        _read_edited(small_synth.parent, tmp_path, edit)


def test_image_folder_one_level_too_high_is_resolved(small_synth: Path, tmp_path: Path) -> None:
    import tarfile

    train = _copy_train(small_synth.parent, tmp_path)
    with tarfile.open(train / "images.tar.gz") as t:
        t.extractall(tmp_path / "high", filter="data")  # tmp/high/images/<files>
    with tarfile.open(train / "images_panoptic.tar.gz") as t:
        t.extractall(tmp_path / "pan", filter="data")
    recs = read_split(str(train / "annotations.json"), str(tmp_path / "high"), str(tmp_path / "pan"), "auto",
                      labels(small_synth.parent), "dataset.train")
    assert recs[0].image.parent == tmp_path / "high" / "images"


def test_coco_instance_image_of_another_size_than_annotated(small_synth: Path, tmp_path: Path) -> None:
    root = small_synth.parent
    data = json.loads((root / "train/instances.json").read_text())
    data["images"][0]["height"] = 80
    (tmp_path / "instances.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"train_00000.jpg in .*images.tar.gz is 64x64 but .*instances.json\) gives it "
                                        r"64x80"):
        read_split(str(tmp_path / "instances.json"), str(root / "train/images.tar.gz"), None, "auto", labels(root),
                   "dataset.train")


def test_semantic_mask_of_another_size_is_named(small_synth: Path, tmp_path: Path) -> None:
    from PIL import Image

    train = _copy_train(small_synth.parent, tmp_path)
    Image.new("L", (32, 32)).save(train / "semantic" / "train_00001.png")
    with pytest.raises(DataError, match=r"is 64x64 but its semantic mask .*train_00001.png is 32x32"):
        read_split(str(train / "semantic.jsonl"), str(train / "images.tar.gz"), None, "auto",
                   labels(small_synth.parent), "dataset.train")


def test_deep_decoding_finds_a_truncated_file_inside_the_archive(small_synth: Path, tmp_path: Path) -> None:
    import io
    import tarfile

    root = small_synth.parent
    with tarfile.open(root / "train/images.tar.gz") as src, tarfile.open(tmp_path / "images.tar.gz", "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("train_00005.jpg"):
                data = data[: len(data) // 2]
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    args = (str(root / "train/annotations.json"), str(tmp_path / "images.tar.gz"),
            str(root / "train/images_panoptic.tar.gz"), "auto", labels(root), "dataset.train")
    assert len(read_split(*args)) == 6  # the header is intact
    with pytest.raises(DataError, match=r"dataset.train.images: images/train_00005.jpg in .*images.tar.gz cannot be "
                                        "decoded"):
        read_split(*args, deep=True)
