"""Every key TAO documents for Mask2Former and SegFormer, taken at its word in a spec of that network: honoured
(its value is what runs), moved to our name for it (with a note), or accepted with a note saying why it has no
effect here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from speckeys import notes_for, one_key

from oneformer.spec import MOVED_KEYS, flatten

DATA = Path(__file__).parent / "data"
DOCUMENTED = {arch: flatten(yaml.safe_load((DATA / f"tao_{arch}_spec.yaml").read_text()))
              for arch in ("mask2former", "segformer")}
NOTED = {"encryption_key", "train.distributed_strategy", "quantize.backend", "train.tensorboard.enabled"}
# TAO Mask2Former's split keys and where they land
SPLIT = {"img_dir": "images", "panoptic_dir": "panoptic", "type": "format", "panoptic_json": "annotations",
         "instance_json": "annotations"}


@pytest.mark.parametrize(("arch", "dotted"), [(a, k) for a, keys in DOCUMENTED.items() for k in sorted(keys)])
def test_every_documented_key_is_honoured_moved_or_noted(arch: str, dotted: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    value: Any = DOCUMENTED[arch][dotted]
    raw = one_key(dotted, value)
    raw.setdefault("model", {})["arch"] = arch
    spec, notes = notes_for(dotted, raw, caplog, built=True)
    split_key = dotted.split(".")
    if dotted in NOTED:
        assert len(notes) == 1 and "no effect" in notes[0], (dotted, notes)
    elif dotted in MOVED_KEYS:
        assert notes == [f"spec: {dotted} is read as {MOVED_KEYS[dotted]}"]
        assert spec.value_at(MOVED_KEYS[dotted]) == value
    elif split_key[0] == "dataset" and split_key[-1] in SPLIT and len(split_key) == 3:
        ours = f"dataset.{split_key[1]}.{SPLIT[split_key[-1]]}"
        assert spec.value_at(ours) == value and notes == [f"spec: dataset.{split_key[1]}: TAO's {split_key[-1]} "
                                                          f"as {SPLIT[split_key[-1]]}"], notes
    else:
        assert notes == [], f"{dotted} is honoured, yet noted: {notes}"
        assert spec.value_at(dotted) == value


def test_a_mask2former_bucket_reads_its_panoptic_annotations_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    raw = yaml.safe_load((DATA / "tao_mask2former_spec.yaml").read_text())
    spec, _ = notes_for("dataset.train", raw, caplog, built=True)
    assert spec.dataset.train.annotations.endswith("annotations_panoptic.json")
    assert "dataset.train.instance_json is not read" in caplog.text
    assert spec.dataset.test.target_size == [544, 960] and spec.model.backbone.swin.embed_dim == 96
    assert spec.arch == "mask2former"  # TAO's Mask2Former keys say so, with no model.arch in the file


def test_the_type_follows_the_annotations_the_mode_reads(caplog: pytest.LogCaptureFixture) -> None:
    raw = {"model": {"mode": "instance"}, "dataset": {"val": {
        "type": "coco_panoptic", "instance_json": "/i.json", "panoptic_json": "/p.json"}}}
    spec, _ = notes_for("dataset.val", raw, caplog, built=True)
    assert (spec.arch, spec.dataset.val.annotations, spec.dataset.val.format) == ("mask2former", "/i.json", "coco")
    assert "dataset.val.type 'coco_panoptic' is read as coco" in caplog.text


def test_a_segformer_spec_resolves_its_root_into_what_every_action_reads(caplog: pytest.LogCaptureFixture) -> None:
    raw = yaml.safe_load((DATA / "tao_segformer_spec.yaml").read_text())
    raw["model"]["arch"] = "segformer"
    spec, _ = notes_for("dataset.segment", raw, caplog, built=True)
    assert spec.dataset.val.images == "/data/segformer/train/images/val"
    assert spec.dataset.quant_calibration_dataset.images_dir == "/data/segformer/train/images/train"
    assert spec.train.sync_batchnorm is True and spec.train.use_distributed_sampler is False
