"""`oneformer check`: validate a spec and every data path an action needs, reporting all problems at once."""

from __future__ import annotations

from pathlib import Path

import fsspec

from oneformer.checkpoint import resolve
from oneformer.data.staging import is_remote, storage_options
from oneformer.errors import OneFormerError
from oneformer.spec import ExperimentSpec

_TRAIN_DATA = ("dataset.train.images", "dataset.train.annotations", "dataset.train.panoptic", "dataset.label_map",
               "dataset.val.images", "dataset.val.annotations", "dataset.val.panoptic")
# Which spec keys each action reads (TAO's per-action dataset requirements, trimmed to what we use).
REQUIRED = {
    "train": _TRAIN_DATA,
    "evaluate": ("dataset.test.images", "dataset.test.annotations"),
    "inference": ("inference.images_dir",),
    "export": (),
    "quantize": ("dataset.quant_calibration_dataset.images_dir",),
    "gen_trt_engine": (),
}
PARITY_IMAGES = ("dataset.val.images", "dataset.test.images", "inference.images_dir",
                 "dataset.quant_calibration_dataset.images_dir")
OPTIONAL = {"evaluate": ("dataset.test.panoptic",), "train": ()}
MODEL_KEYS = {"evaluate": "evaluate.checkpoint", "inference": "inference.checkpoint", "export": "export.checkpoint"}


def get(spec: ExperimentSpec, dotted: str) -> object:
    """Value of a dotted key."""
    obj: object = spec
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def exists(uri: str) -> bool:
    """Whether a local path or URL exists (URLs are asked, not downloaded)."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
        return fs.exists(path)
    return Path(uri.removeprefix("file://")).expanduser().exists()


def check(spec: ExperimentSpec, action: str) -> list[str]:
    """Problems with the data and model paths `action` will read (empty when all is well)."""
    problems = []
    keys = list(REQUIRED.get(action, ()))
    if action == "train" and not spec.dataset.label_map:
        keys.remove("dataset.label_map")
    for key in keys + list(OPTIONAL.get(action, ())):
        value = get(spec, key)
        if not value:
            if key in keys and not key.endswith(".panoptic"):
                problems.append(f"{key} is not set")
            continue
        try:
            if not exists(str(value)):
                problems.append(f"{key}: {value} does not exist")
        except Exception as exc:  # noqa: BLE001 - storage errors are reported, not raised
            problems.append(f"{key}: cannot reach {value} ({type(exc).__name__}: {exc})")
    if action in MODEL_KEYS and not (action != "export" and get(spec, f"{action}.trt_engine")):
        key = MODEL_KEYS[action]
        try:
            resolve(str(get(spec, key)), spec.action_dir("train"), key)
        except OneFormerError as exc:
            problems.append(str(exc))
    if action in ("export", "quantize", "gen_trt_engine") and not any(get(spec, k) for k in PARITY_IMAGES):
        problems.append(f"{action} compares the converted model with its source on real images: set "
                        f"{' or '.join(PARITY_IMAGES)}")
    if action == "gen_trt_engine":
        from oneformer.tensorrt import default_onnx

        onnx_file = spec.gen_trt_engine.onnx_file or str(default_onnx(spec))
        if not Path(onnx_file).is_file():
            problems.append(f"gen_trt_engine.onnx_file: {onnx_file} does not exist; run `oneformer export` first")
    if action == "quantize" and spec.quantize.model_path.endswith((".onnx", ".pth")):
        if not Path(spec.quantize.model_path).is_file():
            problems.append(f"quantize.model_path: {spec.quantize.model_path} does not exist")
    return problems
