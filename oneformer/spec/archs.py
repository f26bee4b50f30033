"""The architecture of a raw spec: which network it describes (detect_arch), and that network's defaults filled
in (arch_defaults)."""

from __future__ import annotations

import copy
from typing import Any

from oneformer.arch_spec import ARCHS, SEGFORMER_DERIVED
from oneformer.errors import SpecError
from oneformer.spec.dataset import PIXEL_MEAN, PIXEL_STD
from oneformer.spec.dotted import _get, _set
from oneformer.spec.tao import MASK2FORMER_SPLIT_KEYS


def arch_defaults(data: dict) -> dict:
    """A copy of a raw spec with its architecture's defaults where it gives none: the registered name, Mask2Former's
    panoptic mode and 960x544 export, and SegFormer's dataset.segment spelled out as the splits, sizes, batch and
    normalization every action reads. Those SegFormer sets through dataset.segment (SEGFORMER_DERIVED) always follow
    it, so a changed dataset.segment.batch_size (an AutoML trial's, an override of a written spec) takes effect."""
    data = copy.deepcopy(data)
    arch = _get(data, "model.arch") or "oneformer"

    def default(key: str, value: Any) -> None:
        if _get(data, key) is None:
            _set(data, key, value)

    def derive(key: str, value: Any) -> None:
        assert key in SEGFORMER_DERIVED, key
        _set(data, key, value)

    default("model_name", arch)
    if arch == "mask2former":
        default("model.mode", "panoptic")
        default("export.input_width", 960)
        default("export.input_height", 544)
    if arch != "segformer":
        return data
    seg = _get(data, "dataset.segment")
    seg = seg if isinstance(seg, dict) else {}
    default("model.mode", "semantic")
    if root := seg.get("root_dir"):
        root = str(root).rstrip("/")
        for split, folder in (("train", "train"), ("val", "val"), ("test", "val")):  # TAO evaluates on val
            default(f"dataset.{split}.images", f"{root}/images/{folder}")
            default(f"dataset.{split}.annotations", f"{root}/masks/{folder}")
            default(f"dataset.{split}.format", "masks")
        default("inference.images_dir", f"{root}/images/test")
    cal = seg.get("quant_calibration_dataset")
    if (cal_dir := (cal.get("images_dir") if isinstance(cal, dict) else None)) or root:
        default("dataset.quant_calibration_dataset.images_dir", cal_dir or f"{str(root).rstrip('/')}/images/train")
    for split in ("train", "val", "test"):
        derive(f"dataset.{split}.batch_size", seg.get("batch_size", 4))
        derive(f"dataset.{split}.num_workers", seg.get("workers", 2))
    size = seg.get("img_size", 256)
    if isinstance(size, int) and size > 0:
        derive("dataset.image_size", size)
        derive("dataset.augmentation.train_crop_size", [size, size])
        derive("dataset.augmentation.train_min_size", [size])
        derive("dataset.augmentation.train_max_size", 4 * size)
        derive("dataset.augmentation.test_min_size", size)
        derive("dataset.augmentation.test_max_size", 4 * size)
        default("export.input_width", size)
        default("export.input_height", size)
    aug = seg.get("augmentation") if isinstance(seg.get("augmentation"), dict) else {}
    crop = aug.get("with_scale_random_crop")
    if isinstance(crop, dict) and crop.get("enable") is False:
        default("dataset.augmentation.min_scale", 1.0)
        default("dataset.augmentation.max_scale", 1.0)
    flip = aug.get("random_flip") if isinstance(aug.get("random_flip"), dict) else {}
    derive("dataset.augmentation.random_flip", bool(flip.get("enable", True))
           and float(flip.get("hflip_probability", 0.5)) > 0)
    for ours, theirs, imagenet in (("pixel_mean", "mean", PIXEL_MEAN), ("pixel_std", "std", PIXEL_STD)):
        values = aug.get(theirs)
        if isinstance(values, list) and all(isinstance(v, int | float) for v in values):
            derive(f"dataset.{ours}", [round(float(v) * 255, 4) for v in values])  # TAO's 0-1 scale -> ours
        elif values is None:
            derive(f"dataset.{ours}", list(imagenet))
    return data


def detect_arch(raw: dict, hint: str | None = None, source: str | None = None) -> str:
    """The network a raw spec describes: model.arch, else the command's (`mask2former`, `segformer`), else the
    spec's shape (dataset.segment: SegFormer; model.mask_former, swin.type or TAO Mask2Former's split keys:
    Mask2Former), else OneFormer."""
    given = _get(raw, "model.arch")
    if given is not None and given not in ARCHS:
        raise SpecError([f"model.arch: {given!r} is not one of {', '.join(ARCHS)}"], source)
    if given and hint and given != hint:
        raise SpecError([f"model.arch is {given!r} but this is the `{hint}` command: run `{given} <action>` (or "
                         f"`oneformer <action>`), or set model.arch: {hint}"], source)
    if given or hint:
        return given or hint
    if isinstance(_get(raw, "dataset.segment"), dict):
        return "segformer"
    splits = [_get(raw, f"dataset.{s}") for s in ("train", "val", "test")]
    mask2former = (isinstance(_get(raw, "model.mask_former"), dict) or _get(raw, "model.backbone.swin.type")
                   or any(isinstance(s, dict) and set(s) & MASK2FORMER_SPLIT_KEYS for s in splits))
    return "mask2former" if mask2former else "oneformer"

