"""The six TAO actions, one module each, named as the CLI verbs; this table is the one list of them.

Each module `oneformer.actions.<verb>` has a function `<verb>(spec) -> dict` that runs the action, writes its
results folder (status.json, atomic outputs) and returns a summary. Everything else keyed by action (the CLI, spec
templates and schemas, `oneformer check`, the pipeline's data staging) reads this table instead of listing the
actions again. Importing this package loads no action: each is imported when it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from oneformer.spec import ExperimentSpec


@dataclass(frozen=True)
class DataInput:
    """A file an action reads: its spec key, its place in TAO's bucket layout, and what `oneformer check` asks of it."""

    key: str
    source: Literal["train", "eval", "inference", "calibration"]  # the bucket folder it comes from
    file: str  # its name inside that folder
    check: Literal["required", "optional"] | None = None  # required: set and present; optional: present when set
    why: str = ""  # what a required input is for, said when it is not set


@dataclass(frozen=True)
class Action:
    """One action: what it does, the spec sections and data it reads, and where its function lives."""

    name: str
    summary: str
    sections: tuple[str, ...]  # spec sections it reads besides the common ones (templates, schemas)
    inputs: tuple[DataInput, ...]  # TAO's per-action dataset table, in TAO's order
    model_key: str | None = None  # the spec key naming the model it reads
    converts: bool = False  # compares a converted model with its source on real images

    def entry(self) -> Callable[[ExperimentSpec], dict]:
        """The action's function, imported now (torch and ONNX imports are slow, so only the one that runs)."""
        return getattr(importlib.import_module(f"{__name__}.{self.name}"), self.name)


def _unchecked(inputs: tuple[DataInput, ...]) -> tuple[DataInput, ...]:
    return tuple(replace(i, check=None) for i in inputs)


_TRAIN = (
    DataInput("dataset.train.images", "train", "images.tar.gz", "required"),
    DataInput("dataset.train.annotations", "train", "annotations.json", "required"),
    DataInput("dataset.label_map", "train", "label_map.json", "optional"),
    DataInput("dataset.train.panoptic", "train", "images_panoptic.tar.gz", "optional"),
    DataInput("dataset.val.images", "eval", "images.tar.gz", "required"),
    DataInput("dataset.val.annotations", "eval", "annotations.json", "required"),
    DataInput("dataset.val.panoptic", "eval", "images_panoptic.tar.gz", "optional"),
)
# export and gen_trt_engine need no dataset in TAO; ours compare the converted model with its source on real
# images, so they read the label map and validation images.
_PARITY = (DataInput("dataset.label_map", "train", "label_map.json"), DataInput("dataset.val.images", "eval",
                                                                                 "images.tar.gz"))

TABLE: dict[str, Action] = {a.name: a for a in (
    Action("train", "train (or resume) a model; checkpoints, checkpoints.json and status.json in <results>/train",
           ("train", "automl"), (*_TRAIN, DataInput("dataset.test.images", "eval", "images.tar.gz"))),
    Action("evaluate", "score a checkpoint, ONNX file, engine or prediction files: mIoU, PQ, mask AP",
           ("evaluate",), (*_unchecked(_TRAIN), DataInput("dataset.test.images", "eval", "images.tar.gz", "required"),
                           DataInput("dataset.test.annotations", "eval", "annotations.json", "required"),
                           DataInput("dataset.test.panoptic", "eval", "images_panoptic.tar.gz", "optional")),
           model_key="evaluate.checkpoint"),
    Action("inference", "predict a folder of images: overlays, label maps, panoptic and instance files",
           ("inference",), (*_unchecked(_TRAIN), DataInput("dataset.test.images", "inference", "images.tar.gz"),
                            DataInput("inference.images_dir", "inference", "images.tar.gz", "required",
                                      "inference reads images from it (not dataset.test.images)")),
           model_key="inference.checkpoint"),
    Action("export", "a checkpoint to ONNX for one task, with a parity report against PyTorch",
           ("export",), _PARITY, model_key="export.checkpoint", converts=True),
    Action("quantize", "an ONNX model to INT8 (QDQ) calibrated on real images, with an accuracy report",
           ("quantize",), (*_unchecked(_TRAIN), DataInput("dataset.test.images", "eval", "images.tar.gz"),
                           DataInput("dataset.quant_calibration_dataset.images_dir", "calibration", "images.tar.gz",
                                     "required", "INT8 calibration needs representative images (a folder, a .tar.gz "
                                                 "or a URL)")),
           converts=True),
    Action("gen_trt_engine", "a TensorRT engine from an ONNX model (needs TensorRT and an NVIDIA GPU)",
           ("gen_trt_engine",), _PARITY, converts=True),
)}
ACTIONS: tuple[str, ...] = tuple(TABLE)


# TAO's bucket layouts of the other networks: Mask2Former names its files for their content (the instance model trains
# on annotations.json, the others on annotations_panoptic.json); SegFormer's sources are roots holding images/<split>
# and masks/<split> folders, with no label map or panoptic PNGs.
MASK2FORMER_FILES = {"annotations.json": "annotations_panoptic.json", "label_map.json": "label_map_panoptic.json"}
SEGFORMER_FILES = {"dataset.train.images": "images/train", "dataset.train.annotations": "masks/train",
                   "dataset.val.images": "images/val", "dataset.val.annotations": "masks/val",
                   "dataset.test.images": "images/val", "dataset.test.annotations": "masks/val",
                   "inference.images_dir": "images/test",
                   "dataset.quant_calibration_dataset.images_dir": "images/train"}
LAYOUTS = ("oneformer", "mask2former", "mask2former_instance", "segformer")


def layout_of(spec: ExperimentSpec) -> str:
    """Which bucket layout the spec's network reads (see bucket_inputs)."""
    if spec.arch == "mask2former" and spec.model.mode == "instance":
        return "mask2former_instance"
    return spec.arch


def bucket_inputs(action: str, layout: str = "oneformer") -> tuple[DataInput, ...]:
    """TABLE[action].inputs with the file names of a network's bucket layout (LAYOUTS)."""
    inputs = TABLE[action].inputs
    if layout == "mask2former":
        return tuple(replace(i, file=MASK2FORMER_FILES.get(i.file, i.file)) for i in inputs)
    if layout == "mask2former_instance":
        return tuple(replace(i, file=MASK2FORMER_FILES["label_map.json"]) if i.file == "label_map.json" else i
                     for i in inputs)
    if layout == "segformer":
        return tuple(replace(i, file=SEGFORMER_FILES[i.key]) for i in inputs if i.key in SEGFORMER_FILES)
    return inputs


def not_set(action: str, key: str) -> str:
    """The message for a required input left unset, the same from `oneformer check` and from the action."""
    why = next((i.why for i in TABLE[action].inputs if i.key == key), "")
    return f"{key} is not set" + (f": {why}" if why else "")
