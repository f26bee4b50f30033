"""Everything training reads, validated before anything is built or written: the results folder, the label map
against the model's classes, both splits (archives, JSON, category ids, image/mask pairs, headers or every pixel)
and the checkpoint to resume from. `oneformer check --action train` and the train action call the same function,
so a check that passes means training starts, and bad data fails in seconds instead of mid-epoch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from oneformer.artifacts import unwritable
from oneformer.data.datasets import read_labels, read_split
from oneformer.data.labelmap import LabelMap
from oneformer.data.readers import Record
from oneformer.errors import CheckpointError, DataError, OneFormerError, SpecError
from oneformer.model.checkpoint import (
    FILE_SUFFIXES,
    META_KEY,
    PREFIX,
    latest_link,
    read_index,
    read_resume,
    safe_load,
)
from oneformer.model.foreign import read_any
from oneformer.spec import ExperimentSpec, flatten

log = logging.getLogger(__name__)

RESUME_KEY = "train.resume_training_checkpoint_path"


@dataclass
class TrainingInputs:
    """What validation read, handed on to training so nothing is read twice."""

    labels: LabelMap | None = None
    train: list[Record] = field(default_factory=list)
    val: list[Record] = field(default_factory=list)
    resume: Path | None = None
    problems: list[OneFormerError] = field(default_factory=list)


def results_key(spec: ExperimentSpec, action: str) -> str:
    """The spec key that decides an action's results folder."""
    own = getattr(getattr(spec, action, None), "results_dir", None)
    return f"{action}.results_dir" if own else "results_dir"


def make_results_dir(spec: ExperimentSpec, action: str) -> Path:
    """Create an action's results folder, or fail with an error naming the key that chose it."""
    path, key = spec.action_dir(action), results_key(spec, action)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError([f"{key}: {path} cannot be created ({exc.strerror or exc}); choose another {key}"]) from None
    return path


def resume_point(spec: ExperimentSpec, train_dir: Path) -> tuple[Path | None, str]:
    """The checkpoint training resumes from (train.resume_training_checkpoint_path, else the train folder's latest)
    and the key to name in errors."""
    explicit = spec.train.resume_training_checkpoint_path
    if explicit:
        return Path(explicit), RESUME_KEY
    latest = latest_link(train_dir, spec.arch)
    # the newest whole checkpoint: the index is written before the link moves, so a run killed in between left an
    # indexed checkpoint newer than the link
    indexed = [e for e in read_index(train_dir) if Path(e["path"]).is_file()] if train_dir.is_dir() else []
    newest = max(indexed, key=lambda e: e["step"], default=None)
    if newest is not None and (not latest.exists() or latest.resolve() != Path(newest["path"]).resolve()):
        log.info("resuming from %s (the newest indexed checkpoint)", newest["path"])
        return Path(newest["path"]), f"{RESUME_KEY} (unset, so training resumes from {newest['path']})"
    if latest.exists():
        log.info("resuming from %s", latest.resolve())
        return latest.resolve(), f"{RESUME_KEY} (unset, so training resumes from {latest})"
    return None, RESUME_KEY


def collect(spec: ExperimentSpec, deep: bool = True, weights: bool = False) -> TrainingInputs:
    """Validate everything training reads; every problem is collected (as the error training would raise).
    `weights` also loads the pretrained checkpoint files (training loads them itself, before writing anything)."""
    out, start = TrainingInputs(), time.perf_counter()

    def attempt(fn):  # noqa: ANN001, ANN202 - a small local helper
        try:
            return fn()
        except OneFormerError as exc:
            out.problems.append(exc)
            return None

    train_dir = spec.action_dir("train")
    problem = unwritable(train_dir, results_key(spec, "train"))
    if problem:
        out.problems.append(SpecError([problem]))
    out.labels = attempt(lambda: read_labels(spec))
    ds = spec.dataset
    if spec.arch == "segformer" and not ds.train.annotations:
        out.problems.append(DataError("dataset.segment.root_dir is not set: SegFormer trains on root_dir/images/train "
                                      "with root_dir/masks/train and validates on images/val with masks/val"))
    elif out.labels is not None:
        out.train = attempt(lambda: read_split(ds.train.annotations, ds.train.images, ds.train.panoptic,
                                               ds.train.format, out.labels, "dataset.train", deep,
                                               ds.ignore_value, spec.binary_masks)) or []
        if ds.val.annotations:
            out.val = attempt(lambda: read_split(ds.val.annotations, ds.val.images, ds.val.panoptic, ds.val.format,
                                                 out.labels, "dataset.val", deep, ds.ignore_value,
                                                 spec.binary_masks)) or []
    resume, key = resume_point(spec, train_dir)
    raw = attempt(lambda: read_resume(resume, key)) if resume is not None else None
    if raw is not None and (out.labels is None or attempt(lambda: same_network(raw, spec, out.labels, resume, key))):
        out.resume = resume
    if weights:
        if spec.train.pretrained_model and Path(spec.train.pretrained_model).suffix.lower() in FILE_SUFFIXES:
            attempt(lambda: read_any(spec.train.pretrained_model, "train.pretrained_model", mmap=True,
                                            spec=spec))  # ours, or a TAO / Detectron2 one of the spec's network
        if spec.train.pretrained_backbone and Path(spec.train.pretrained_backbone).is_file():
            attempt(lambda: safe_load(spec.train.pretrained_backbone, "train.pretrained_backbone", mmap=True))
    log.info("training inputs validated in %.1f s (%s): %d problem(s)", time.perf_counter() - start,
             "every file decoded" if deep else "file headers", len(out.problems))
    return out


def same_network(raw: dict, spec: ExperimentSpec, labels: LabelMap, path: Path, key: str) -> bool:
    """True when the checkpoint's weights have the shapes the spec's model has; otherwise an error naming the
    model keys that changed since it was written (resuming would fail mid-setup with a tensor-size traceback)."""
    import torch

    from oneformer.model.network import build_network, network_config

    with torch.device("meta"):  # shapes only: no memory, no initialization
        wanted = {PREFIX + k: tuple(v.shape) for k, v in build_network(network_config(spec, labels.names))
                  .state_dict().items()}
    have = {k: tuple(v.shape) for k, v in raw["state_dict"].items() if hasattr(v, "shape")}
    differ = sorted(k for k in wanted.keys() & have.keys() if wanted[k] != have[k])
    differ += sorted(wanted.keys() ^ have.keys())
    if not differ:
        return True
    saved = flatten({"model": (raw.get(META_KEY, {}).get("spec") or {}).get("model", {})})
    now = flatten({"model": spec.model.model_dump(mode="json")})
    changed = [f"{k} (checkpoint {saved[k]!r}, spec {now[k]!r})" for k in sorted(saved.keys() & now.keys())
               if saved[k] != now[k]]
    first = differ[0]
    shapes = f"checkpoint {list(have.get(first, ()))}, spec {list(wanted.get(first, ()))}"
    raise CheckpointError(
        f"{key}: {path} was written by another network than the spec describes ({len(differ)} weights differ, e.g. "
        f"{first}: {shapes}); " + (f"changed model keys: {', '.join(changed[:8])}. " if changed else "")
        + "Resume with the model keys the checkpoint was trained with, or train the new model in a new results_dir "
        "(or pass it the old one as train.pretrained_model)")


def message(problem: OneFormerError) -> str:
    """One problem as a line (a SpecError's items without its heading)."""
    return "\n".join(problem.problems) if isinstance(problem, SpecError) else str(problem)


def validate_training(spec: ExperimentSpec, deep: bool = True) -> TrainingInputs:
    """Everything training reads, validated with no side effect but the staging cache; raises the one problem
    found, or a DataError listing them all."""
    inputs = collect(spec, deep)
    if len(inputs.problems) == 1:
        raise inputs.problems[0]
    if inputs.problems:
        raise DataError(f"training cannot start; {len(inputs.problems)} problems:\n"
                        + "\n".join(f"- {message(p)}" for p in inputs.problems))
    return inputs
