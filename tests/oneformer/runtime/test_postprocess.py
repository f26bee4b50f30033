"""Post-processing from logits, shared by every backend."""

from __future__ import annotations

import numpy as np
import torch

from oneformer.runtime.postprocess import instance, panoptic, semantic, semantic_scores, to_image_size

BIG = 10.0


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    """3 queries over classes {0 stuff, 1 thing} + no-object: left half stuff, two thing squares on the right."""
    cls = torch.full((4, 3), -BIG)
    cls[0, 0] = cls[1, 1] = cls[2, 1] = BIG
    cls[3, 2] = BIG  # no-object query
    masks = torch.full((4, 8, 8), -BIG)
    masks[0, :, :4] = BIG
    masks[1, :4, 4:] = BIG
    masks[2, 4:, 4:] = BIG
    return cls, masks


def test_semantic_argmax_of_weighted_masks() -> None:
    label = semantic(semantic_scores(*_logits()), (8, 8), (8, 8), (8, 8))
    assert (label[:, :4] == 0).all() and (label[:, 4:] == 1).all()


def test_panoptic_separates_things_and_drops_no_object() -> None:
    pred = panoptic(*_logits(), thing=np.array([False, True]), object_mask_threshold=0.5, overlap_threshold=0.5)
    assert [s["category"] for s in pred.segments] == [0, 1, 1]
    assert len(np.unique(pred.ids)) == 3 and (pred.ids > 0).all()


def test_panoptic_merges_stuff_of_one_class() -> None:
    cls, masks = _logits()
    cls[1] = cls[0]  # query 1 now predicts stuff class 0 as well
    pred = panoptic(cls, masks, np.array([False, True]), 0.5, 0.5)
    assert [s["category"] for s in pred.segments] == [0, 1]
    assert (pred.ids[:4, :] == pred.ids[0, 0]).all()


def test_instance_only_things_ranked_by_score() -> None:
    preds = instance(*_logits(), thing=np.array([False, True]), topk=5)
    assert {p.cls for p in preds} == {1}
    assert [p.mask.sum() for p in preds[:2]] == [16, 16] and preds[0].score > 0.9
    assert all(p.score < 1e-6 for p in preds[2:])  # the stuff query's thing score is negligible


def test_to_image_size_crops_padding() -> None:
    m = torch.zeros(1, 4, 4)
    m[0, :, 3:] = 5  # padded column region
    out = to_image_size(m, input_hw=(16, 16), valid_hw=(16, 12), out_hw=(32, 24))
    assert out.shape == (1, 32, 24) and out[0, :, :18].max() < 1
