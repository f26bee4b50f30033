"""SegFormer's layout: images/<split> with a label-id PNG per image in masks/<split>, read through its palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oneformer.data.datasets import read_labels, read_splits
from oneformer.data.readers import load_target
from oneformer.errors import DataError
from oneformer.spec import build_spec


def _layout(root: Path, masks: dict[str, np.ndarray]) -> None:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for name, mask in masks.items():
            Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "images" / split / f"{name}.jpg")
            Image.fromarray(mask).save(root / "masks" / split / f"{name}.png")


def _spec(root: Path, **segment: object):  # noqa: ANN202 - an ExperimentSpec
    return build_spec({"model": {"arch": "segformer"}, "dataset": {"segment": {"root_dir": str(root), **segment}}})


PALETTE = [{"seg_class": "background", "rgb": [0, 0, 0], "label_id": 0},
           {"seg_class": "car", "rgb": [0, 0, 255], "label_id": 1},
           {"seg_class": "truck", "rgb": [0, 255, 0], "label_id": 2, "mapping_class": "car"}]


def test_palette_classes_and_their_mapping_are_what_training_reads(tmp_path: Path) -> None:
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    _layout(tmp_path, {"a": mask})
    spec = _spec(tmp_path, num_classes=2, palette=PALETTE)
    labels = read_labels(spec)
    assert labels.names == ["background", "car"]  # truck trains as car
    train, val = read_splits(spec, labels, deep=True)
    ids, segments = load_target(train[0], labels)
    classes = {s.id: s.cls for s in segments}
    assert [[classes.get(int(v), -1) for v in row] for row in ids] == [[0, 1], [1, -1]]  # 255: void
    assert len(val) == 1


def test_binary_masks_stored_as_0_and_255_are_two_classes_with_norm(tmp_path: Path) -> None:
    _layout(tmp_path, {"a": np.array([[0, 255], [255, 0]], np.uint8)})
    spec = _spec(tmp_path, num_classes=2, label_transform="norm")
    labels = read_labels(spec)
    train, _ = read_splits(spec, labels, deep=True)
    ids, segments = load_target(train[0], labels)
    classes = {s.id: s.cls for s in segments}
    assert [[classes[int(v)] for v in row] for row in ids] == [[0, 1], [1, 0]]


def test_an_image_without_its_mask_is_an_error_naming_it(tmp_path: Path) -> None:
    _layout(tmp_path, {"a": np.zeros((4, 4), np.uint8), "b": np.zeros((4, 4), np.uint8)})
    (tmp_path / "masks" / "train" / "b.png").unlink()
    spec = _spec(tmp_path, num_classes=2)
    with pytest.raises(DataError, match=r"dataset.train.annotations: 1 images of .*images/train have no mask in "
                                        r".*masks/train .*: b.jpg"):
        read_splits(spec, read_labels(spec))


def test_a_mask_value_outside_the_palette_is_found_before_training(tmp_path: Path) -> None:
    _layout(tmp_path, {"a": np.array([[0, 7]], np.uint8)})
    spec = _spec(tmp_path, num_classes=3, palette=PALETTE)
    with pytest.raises(DataError, match=r"holds values \[7\]"):
        read_splits(spec, read_labels(spec), deep=True)


def test_a_mapped_class_is_read_the_same_by_the_trained_model(tmp_path: Path) -> None:
    """The label map a checkpoint or model file stores keeps the mapping: evaluation reads masks as training did."""
    from oneformer.data.labelmap import LabelMap

    labels = read_labels(_spec(tmp_path, num_classes=2, palette=PALETTE))
    stored = LabelMap.from_list(labels.to_list(), labels.contiguous, "checkpoint label map")
    assert stored.index == labels.index == {0: 0, 1: 1, 2: 1} and stored.names == ["background", "car"]


def test_a_chain_of_mapped_classes_is_refused() -> None:
    from oneformer.errors import SpecError

    chain = [*PALETTE, {"seg_class": "van", "label_id": 3, "mapping_class": "truck"}]
    with pytest.raises(SpecError, match=r"palette classes \['van'\] map onto a class that is itself mapped"):
        build_spec({"model": {"arch": "segformer"}, "dataset": {"segment": {"num_classes": 2, "palette": chain}}})
