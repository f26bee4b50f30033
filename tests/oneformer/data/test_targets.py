"""Task-conditioned targets and augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oneformer.data.readers import Segment
from oneformer.data.targets import build_targets, sample_task
from oneformer.data.tokenizer import TextTable, tokenize
from oneformer.data.transforms import train_transform
from oneformer.spec import AugmentationConfig

# Two stuff segments of class 0 and 1, two things of class 2, and one crowd thing of class 3.
IDS = np.array([[1, 1, 2, 2], [1, 3, 3, 2], [4, 4, 2, 2], [5, 5, 0, 0]], dtype=np.int32)
SEGS = [Segment(1, 0, False), Segment(2, 1, False), Segment(3, 2, True), Segment(4, 2, True),
        Segment(5, 3, True, iscrowd=True)]


def test_semantic_merges_instances_by_class() -> None:
    task, masks, classes = build_targets(IDS, SEGS, "semantic")
    assert task == "semantic" and sorted(classes.tolist()) == [0, 1, 2, 3]
    thing2 = masks[classes.tolist().index(2)]
    assert thing2.sum() == 4  # both class-2 instances in one mask


def test_instance_keeps_non_crowd_things_only() -> None:
    task, masks, classes = build_targets(IDS, SEGS, "instance")
    assert task == "instance" and classes.tolist() == [2, 2]
    assert masks.sum((1, 2)).tolist() == [2, 2]


def test_panoptic_has_things_and_stuff() -> None:
    _, masks, classes = build_targets(IDS, SEGS, "panoptic")
    assert sorted(classes.tolist()) == [0, 1, 2, 2]
    assert masks.sum() == 3 + 5 + 2 + 2


def test_instance_without_things_falls_back_to_semantic() -> None:
    task, _, classes = build_targets(np.array([[1, 2]]), [Segment(1, 0, False), Segment(2, 1, False)], "instance")
    assert task == "semantic" and sorted(classes.tolist()) == [0, 1]


def test_task_sampling_follows_probabilities() -> None:
    rng = np.random.default_rng(0)
    tasks = [sample_task((0.0, 0.25, 0.75), rng) for _ in range(4000)]
    assert "semantic" not in tasks
    assert tasks.count("panoptic") / 4000 == pytest.approx(0.75, abs=0.03)


def test_task_and_class_text() -> None:
    table = TextTable(["sky", "circle"], task_len=16, text_len=8)
    assert table.task_ids["panoptic"].tolist()[:7] == tokenize(["the task is panoptic"], 16)[0].tolist()[:7]
    text = table.text_inputs("panoptic", torch.tensor([1]), num_text=3)
    assert text[0].tolist() == tokenize(["a photo with a circle"], 8)[0].tolist()
    assert text[1].tolist() == text[2].tolist() == tokenize(["a panoptic photo"], 8)[0].tolist()


def test_clip_ids_match_official_vocabulary() -> None:
    ids = tokenize(["the task is semantic"], 9)[0].tolist()
    assert ids == [49406, 518, 10549, 533, 29119, 1550, 49407, 0, 0]


def test_train_transform_crops_flips_and_pads() -> None:
    cfg = AugmentationConfig(train_min_size=[48], train_max_size=100, train_crop_size=[64, 64], min_scale=1.0,
                             max_scale=1.0)
    image = np.zeros((40, 80, 3), np.uint8)
    ids = np.ones((40, 80), np.int32)
    out, out_ids, valid = train_transform(image, ids, cfg, np.random.default_rng(0))
    assert out.shape == (64, 64, 3) and out_ids.shape == (64, 64)
    assert valid[:48].all() and not valid[48:].any()  # 40x80 -> 48x96 -> crop 48x64 -> pad to 64
    assert (out_ids[48:] == 0).all()
