"""TAO compatibility: TAO keys that are ignored, noted or moved to ours, and TAO Mask2Former's split keys read as
ours."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from oneformer.errors import SpecError
from oneformer.spec.actions import TrtCalibrationConfig
from oneformer.spec.dotted import _get, _pop, _set

log = logging.getLogger("oneformer.spec")  # one logger for the whole spec package, as before the split

# Keys TAO accepts that have no effect here: dropped with a note instead of failing.
IGNORED_KEYS = {
    "model.export": "export settings live in the export section",
    "dataset.cutmix_prob": "cutmix is not implemented",
    "dataset.workers": "use dataset.<split>.num_workers",
    "dataset.dataset_type": "annotations are always shared across workers",
    "dataset.name": "informational only",
    "export.gpu_id": "export runs on CPU",
    "evaluate.trt_batch_size": "batch size comes from evaluate.batch_size",
}
# Keys kept, whose TAO value has no effect here: (when it has none, why) -> a note when the spec gives such a value.
VALUE_NOTES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "encryption_key": (lambda v: v is not None, "no file written here is encrypted (TAO 5 writes .pth and .onnx "
                                                "unencrypted too); the key is masked wherever the spec is written"),
    "train.tensorboard.enabled": (lambda v: v is True, "metrics, charts and pictures are logged to MLflow"),
    "quantize.backend": (lambda v: v is not None, "INT8 here is ONNX Runtime's static QDQ quantization of the "
                         "exported model (what TAO's modelopt.onnx static_ptq also produces)"),
    "train.distributed_strategy": (lambda v: v in ("ddp_sharded", "fsdp"), "fairscale's sharded DDP left "
                                   "Lightning 2 and FSDP is not offered here; "
                                   "training runs as ddp (save memory with train.precision=16-mixed, "
                                   "train.activation_checkpoint or train.freeze)"),
    "train.optim.monitor_name": (lambda v: v not in (None, "mIoU"), "'best' is always the checkpoint with the "
                                 "highest validation mIoU (what the pipeline selects by)"),
    "export.on_cpu": (lambda v: v is False, "the export always traces on the CPU; the ONNX graph is the same"),
    "export.opset_version": (lambda v: isinstance(v, int) and v < 16, "the export uses opset 16, the lowest that "
                             "holds GridSample (the deformable attention)"),
    "gen_trt_engine.opset_version": (lambda v: v is not None, "TensorRT parses the ONNX file's own opset "
                                     "(export.opset_version sets it)"),
    "gen_trt_engine.tensorrt.calibration": (lambda v: _given(v, TrtCalibrationConfig), "INT8 engines are built "
                                            "from the QDQ model of `oneformer quantize`, its scales in the graph"),
    "evaluate.num_gpus": (lambda v: isinstance(v, int) and v > 1, "evaluation runs on one device, the first of "
                          "evaluate.gpu_ids; raise evaluate.batch_size instead"),
    "inference.num_gpus": (lambda v: isinstance(v, int) and v > 1, "inference runs on one device, the first of "
                           "inference.gpu_ids; raise inference.batch_size instead"),
}
# Keys TAO places elsewhere: moved with a note.
MOVED_KEYS = {
    "model.object_mask_threshold": "model.test.object_mask_threshold",
    "model.overlap_threshold": "model.test.overlap_threshold",
    "model.test_topk_per_image": "model.test.test_topk_per_image",
    "model.one_former.mask_dim": "model.sem_seg_head.mask_dim",
    "model.backbone.pretrained_weights": "train.pretrained_backbone",  # TAO's backbone weights (.pth or hub id)
    "model.backbone.pretrained_backbone_path": "train.pretrained_backbone",  # SegFormer's name for them
    "train.pretrained_model_path": "train.pretrained_model",
}


def _given(value: Any, section: type[BaseModel]) -> bool:
    """Whether a section's raw value sets anything other than its defaults (a written spec repeats them all)."""
    defaults = section().model_dump()
    return isinstance(value, dict) and any(defaults.get(k, object()) != v for k, v in value.items())


# TAO Mask2Former's split keys, read as ours
SPLIT_NAMES = {"img_dir": "images", "panoptic_dir": "panoptic", "type": "format"}
MASK2FORMER_SPLIT_KEYS = {"img_dir", "panoptic_dir", "panoptic_json", "instance_json", "target_size"}


def _split_names(raw: dict) -> list[str]:
    """TAO Mask2Former's dataset.<split> names moved to ours: img_dir, panoptic_dir, type, and panoptic_json or
    instance_json as annotations (the one model.mode trains on; both given: the other is noted and unused)."""
    notes = []
    instance_mode = _get(raw, "model.mode") == "instance"
    for split in ("train", "val", "test"):
        cfg = _get(raw, f"dataset.{split}")
        if not isinstance(cfg, dict):
            continue
        moved = []
        for theirs, ours in SPLIT_NAMES.items():
            if theirs in cfg and cfg.get(ours) is None:
                cfg[ours] = cfg.pop(theirs)
                moved.append(f"{theirs} as {ours}")
        pan, inst = cfg.pop("panoptic_json", None), cfg.pop("instance_json", None)
        chosen, name = (inst, "instance_json") if (instance_mode and inst) or not pan else (pan, "panoptic_json")
        if chosen is not None and cfg.get("annotations") is None:
            cfg["annotations"] = chosen
            moved.append(f"{name} as annotations")
            kind = "coco" if name == "instance_json" else "coco_panoptic"
            if cfg.get("format") not in (None, "auto", kind):
                notes.append(f"dataset.{split}.type {cfg['format']!r} is read as {kind}: the {name} file is "
                             "what this model trains and scores on")
            cfg["format"] = kind
        if moved:
            notes.append(f"dataset.{split}: TAO's {', '.join(moved)}")
        if pan is not None and inst is not None:
            unused = "panoptic_json" if name == "instance_json" else "instance_json"
            notes.append(f"dataset.{split}.{unused} is not read: the {'instance' if instance_mode else 'panoptic'} "
                         f"annotations ({name}) hold every target and metric of this model")
    return notes


def _tao_compat(raw: dict, source: str | None = None) -> list[str]:
    notes, clashes = _split_names(raw), []
    for old, new in MOVED_KEYS.items():
        found, value = _pop(raw, old)
        if found:
            if value is not None and _get(raw, new) not in (None, value):
                clashes.append(f"{old}={value!r} is TAO's name for {new}, which is {_get(raw, new)!r}: keep one")
                continue
            if value is not None:
                _set(raw, new, value)
            notes.append(f"{old} is read as {new}")
    if clashes:
        raise SpecError(clashes, source)
    for key, why in IGNORED_KEYS.items():
        found, _ = _pop(raw, key)
        if found:
            notes.append(f"{key} is accepted for TAO compatibility and ignored: {why}")
    for key, (no_effect, why) in VALUE_NOTES.items():
        value = _get(raw, key)
        if value is not None and no_effect(value):
            shown = "***" if key == "encryption_key" else repr(value)
            notes.append(f"{key}={shown} has no effect here: {why}")
    for note in notes:
        log.info("spec: %s", note)
    return notes

