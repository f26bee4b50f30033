"""`oneformer check`: validate a spec and every data path an action needs, reporting all problems at once. For
train it runs the very validation training runs before its first step (archives, JSON, category ids, image/mask
pairs, image headers; every pixel with `deep`), so a check that passes means training starts."""

from __future__ import annotations

from pathlib import Path

import fsspec

from oneformer.actions import TABLE, not_set
from oneformer.actions.gen_trt_engine import default_onnx
from oneformer.data.staging import is_remote, storage_options
from oneformer.errors import OneFormerError, SpecError
from oneformer.model.checkpoint import resolve
from oneformer.parity import IMAGE_SOURCES
from oneformer.spec import ExperimentSpec


def exists(uri: str) -> bool:
    """Whether a local path or URL exists (URLs are asked, not downloaded)."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
        return fs.exists(path)
    return Path(uri.removeprefix("file://")).expanduser().exists()


def check(spec: ExperimentSpec, action: str, deep: bool = False, models: bool = True) -> list[str]:
    """Problems with the data and model paths `action` will read (empty when all is well); `deep` decodes every
    image and mask instead of reading their headers; `models=False` leaves out the model files (a flow's parent
    model is resolved after its data)."""
    problems: list[str] = []
    missing: list[str] = []
    entry = TABLE[action]
    for item in entry.inputs:
        if item.check is None:
            continue
        value = spec.value_at(item.key)
        if not value:
            if item.check == "required":
                problems.append(not_set(action, item.key))
            continue
        try:
            if not exists(str(value)):
                problems.append(f"{item.key}: {value} does not exist")
                missing.append(str(value))
        except Exception as exc:  # noqa: BLE001 - storage errors are reported, not raised
            problems.append(f"{item.key}: cannot reach {value} ({type(exc).__name__}: {exc})")
    if action == "train":
        from oneformer.training.validate import collect, message

        # the validation training runs, plus its pretrained files; a path reported missing above is not repeated
        for problem in collect(spec, deep, weights=True).problems:
            text = message(problem)
            if not any(m in text for m in missing):
                problems.append(text)
    engine = spec.value_at(f"{action}.trt_engine") if action in ("evaluate", "inference") else None
    scores_files = action == "evaluate" and bool(spec.evaluate.predictions)
    if scores_files and not exists(str(spec.evaluate.predictions)):
        problems.append(f"evaluate.predictions: {spec.evaluate.predictions} does not exist")
    if entry.converts and not any(spec.value_at(k) for k in IMAGE_SOURCES):
        problems.append(f"{action} compares the converted model with its source on real images: set "
                        f"{' or '.join(IMAGE_SOURCES)}")
    if not models:
        return problems
    if entry.model_key and not engine and not scores_files:
        try:
            resolve(str(spec.value_at(entry.model_key)), spec.action_dir("train"), entry.model_key, spec.arch)
        except OneFormerError as exc:
            problems.append(str(exc))
    if action == "gen_trt_engine":
        onnx_file = spec.gen_trt_engine.onnx_file or str(default_onnx(spec))
        if not Path(onnx_file).is_file():
            problems.append(f"gen_trt_engine.onnx_file: {onnx_file} does not exist; run `oneformer export` first")
    if action == "quantize" and spec.quantize.model_path.endswith((".onnx", ".pth")):
        if not Path(spec.quantize.model_path).is_file():
            problems.append(f"quantize.model_path: {spec.quantize.model_path} does not exist")
    return problems


def preflight(spec: ExperimentSpec, action: str, models: bool = True) -> None:
    """`check` as the first step of an action: every problem at once, before anything is created or written. Train
    decodes every file when train.verify_data says so (decoded files are remembered, so training does not redo it)."""
    deep = action == "train" and spec.train.verify_data == "decode"
    if problems := check(spec, action, deep=deep, models=models):
        raise SpecError(problems, f"for {action}")
