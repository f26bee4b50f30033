"""Overlays like TAO's: classes blended in, each segment named, a box around each instance."""

from __future__ import annotations

import numpy as np

from oneformer.runtime.draw import overlay
from oneformer.runtime.segment import Segmentation

PALETTE = np.array([[0, 128, 0], [200, 30, 30]], dtype=np.uint8)  # grass (stuff), car (thing)


def scene(task: str) -> Segmentation:
    """A 96x128 picture: grass below, one car instance (a square) on it."""
    labels = np.full((96, 128), -1, np.int32)
    ids = np.zeros((96, 128), np.int32)
    labels[48:], ids[48:] = 0, 1
    labels[20:60, 30:70], ids[20:60, 30:70] = 1, 2
    segments = [{"id": 1, "category": "grass", "category_id": 1, "isthing": False, "score": None, "area": 0},
                {"id": 2, "category": "car", "category_id": 2, "isthing": True, "score": 0.91, "area": 0}]
    return Segmentation(task, labels, ids, segments)


def test_instances_get_a_box_in_their_colour_and_every_segment_a_name() -> None:
    image = np.full((96, 128, 3), 255, np.uint8)
    plain = np.asarray(overlay(image, scene("panoptic"), PALETTE, 0.5, labels=False))
    drawn = np.asarray(overlay(image, scene("panoptic"), PALETTE, 0.5))
    assert (plain[10, 100] == 255).all() and (plain[70, 100] == [127, 191, 127]).all()  # blended, nothing drawn
    box_edge = drawn[40, 30]  # the car's left edge, below its name tag
    assert (box_edge == PALETTE[1]).all() and (drawn[59, 50] == PALETTE[1]).all()  # left and bottom edges
    assert (drawn[40, 50] == plain[40, 50]).all()  # the inside of the box is left alone
    tag = drawn[20:28, 31:60]  # the name tag at the box's top-left corner: text on the class colour
    assert (tag == PALETTE[1]).all(axis=-1).mean() > 0.3 and not (tag == PALETTE[1]).all()
    grass_rows = np.nonzero((drawn[48:] != plain[48:]).any(axis=-1))[0]
    assert grass_rows.size > 0  # the stuff segment is named on itself, without a box


def test_the_semantic_task_names_classes_without_boxes() -> None:
    image = np.full((96, 128, 3), 255, np.uint8)
    drawn = np.asarray(overlay(image, scene("semantic"), PALETTE, 0.5))
    plain = np.asarray(overlay(image, scene("semantic"), PALETTE, 0.5, labels=False))
    assert (drawn[40, 30] == plain[40, 30]).all() and (drawn != plain).any()
