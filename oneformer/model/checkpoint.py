"""Self-contained checkpoints on disk: their format, checkpoints.json, and resolving 'best' / 'latest' / a path."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oneformer.artifacts import atomic_path, write_json
from oneformer.data.labelmap import LabelMap
from oneformer.errors import CheckpointError
from oneformer.secrets import redact

log = logging.getLogger(__name__)

META_KEY = "oneformer"
INDEX = "checkpoints.json"
LATEST = "oneformer_model_latest.pth"
ARCH_NAMES = ("oneformer", "mask2former", "segformer")


def latest_name(arch: str = "oneformer") -> str:
    """TAO's link to the newest checkpoint, named for the network: <arch>_model_latest.pth."""
    return f"{arch}_model_latest.pth"


def latest_link(train_dir: Path, arch: str | None = None) -> Path:
    """The train folder's latest link: the network's (`arch`), else whichever network wrote one
    (oneformer_model_latest.pth if none did)."""
    for name in (arch,) if arch else ARCH_NAMES:
        if (path := Path(train_dir) / latest_name(name)).exists():
            return path
    return Path(train_dir) / latest_name(arch or "oneformer")
NAME = "model_epoch_{epoch:03d}_step_{step:05d}.pth"
PREFIX = "net."
FILE_SUFFIXES = (".pth", ".ckpt", ".pt", ".pkl")  # weight files: ours, or (read with a spec) TAO's and Detectron2's


@dataclass
class Checkpoint:
    """What downstream actions need from a training checkpoint, without the training data."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    hf_config: dict
    label_map: list[dict]
    contiguous_id: bool
    spec: dict
    epoch: int
    step: int
    missing: tuple[str, ...] = ()  # of a file written elsewhere: tensors it lacked, initialized fresh from the spec

    @property
    def labels(self) -> LabelMap:
        """The label map the model was trained with."""
        return LabelMap.from_list(self.label_map, self.contiguous_id, f"{self.path} label map")


def checkpoint_meta(net: torch.nn.Module, labels: LabelMap, spec: dict, metrics: dict | None = None) -> dict:
    """The section that makes a checkpoint self-contained: config, label map and spec (its secrets masked: a
    checkpoint is copied to registries and buckets, and nothing downstream needs them)."""
    return {"hf_config": json.loads(net.config.to_json_string()), "label_map": labels.to_list(),
            "contiguous_id": labels.contiguous, "spec": redact(spec), "metrics": metrics or {}}


def save_weights(path: Path, net: torch.nn.Module, labels: LabelMap, spec: dict) -> Path:
    """A checkpoint of a network that was not trained here (random or imported weights), same format."""
    state = {PREFIX + k: v for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "epoch": 0, "global_step": 0, META_KEY: checkpoint_meta(net, labels, spec)},
                   tmp)
    return Path(path)


# PyTorch's own advice on a refused file is to retry with weights_only=False, which runs whatever code the file
# holds; we never pass that on. These are the lines of its message that say what was refused.
_TORCH_ADVICE = ("weights_only", "trusted source", "add_safe_globals", "safe_globals", "documentation of torch.load",
                 "pytorch.org/docs", "In PyTorch 2.6")


def load_failure(exc: Exception) -> str:
    """The part of a torch.load error worth showing: what was refused, without PyTorch's advice to turn the
    weights_only safety off (or its terminal colour codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if found := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return f"it holds a {found.group(1)} object, which a safe load does not build"
    lines = [ln.strip() for ln in text.replace(". ", ".\n").splitlines()]
    kept = [ln for ln in lines if ln and not any(a in ln for a in _TORCH_ADVICE)]
    return " ".join(kept)[:300] or type(exc).__name__


def _refusal(where: str, path: Path, exc: Exception, key: str | None) -> str:
    """Why a file was refused and what to give instead: a TAO (OmegaConf) checkpoint is named as one."""
    why = load_failure(exc)
    text = (f"{where}{path} is not a checkpoint of ours and was not loaded ({why}). Our checkpoints hold only "
            f"tensors and plain data: give one written by `oneformer train`")
    if "omegaconf" in why:
        text += (". This looks like a TAO or Lightning checkpoint that keeps its config as OmegaConf objects; "
                 "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD does not change this (every load here is weights-only)")
    if key == "train.pretrained_backbone":
        text += ", or re-save the backbone's weights as a plain state dict (torch.save(model.state_dict(), path)) " \
                "in a trusted environment"
    return text


def safe_load(path: str | Path, key: str | None = None, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, always passed explicitly (so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn
    it off): a file holding anything but tensors and plain data is refused, never executed. Errors name the key and
    say what to do instead of repeating PyTorch's advice to load unsafely. `mmap` maps the tensors instead of reading
    them, for a look at the metadata that costs no read of the weights."""
    path, where = Path(path), f"{key}: " if key else ""
    if not path.is_file():
        raise CheckpointError(f"{where}checkpoint {path} does not exist")
    try:
        return weights_only_load(path, mmap)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means: not a checkpoint of ours
        raise CheckpointError(_refusal(where, path, exc, key)) from None


def weights_only_load(path: Path, mmap: bool) -> Any:
    """torch.load with weights_only=True, mapped where the file allows it; torch's own exception on refusal."""
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - a legacy (non-zip) file cannot be mapped: read it, and report that
            pass
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path, key: str | None = None, mmap: bool = False) -> Checkpoint:
    """Load with weights_only=True: our checkpoints hold only tensors and plain data (`mmap`: see safe_load). Files of
    other tools (TAO, Detectron2) are read by oneformer.model.foreign.read_any, given the spec of their network."""
    path = Path(path)
    return from_content(safe_load(path, key, mmap), path, key)


def is_ours(raw: Any) -> bool:
    """Whether a file's loaded content is a checkpoint of ours: its metadata section and a state dict."""
    return isinstance(raw, dict) and isinstance(raw.get(META_KEY), dict) and isinstance(raw.get("state_dict"), dict)


def from_content(raw: Any, path: Path, key: str | None = None) -> Checkpoint:
    """The Checkpoint of a file's loaded content, or the error for a file that is not ours."""
    if not is_ours(raw):
        raise CheckpointError(not_ours(path, key))
    meta = raw[META_KEY]
    state = {k.removeprefix(PREFIX): v for k, v in raw["state_dict"].items()}
    return Checkpoint(path, state, meta["hf_config"], meta["label_map"], meta.get("contiguous_id", True),
                      meta.get("spec", {}), int(raw.get("epoch", 0)), int(raw.get("global_step", 0)))


def not_ours(path: Path, key: str | None) -> str:
    """The one message for a file that loads but is not a oneformer checkpoint."""
    where = f"{key}: " if key else ""
    return (f"{where}{path} is not a oneformer checkpoint (no '{META_KEY}' section); give a checkpoint written by "
            "`oneformer train`, e.g. <results_dir>/train/model_epoch_*.pth")


def read_resume(path: str | Path, key: str) -> dict:
    """A training checkpoint to resume from, loaded safely and checked to be ours with the loop state Lightning
    restores (weights, optimizer, loops); the same errors as every other checkpoint entry point. Mapped, not read:
    this is validation, and Lightning reads the weights when it resumes."""
    raw = safe_load(path, key, mmap=True)
    if not is_ours(raw):
        raise CheckpointError(not_ours(Path(path), key))
    missing = [k for k in ("optimizer_states", "loops", "epoch", "global_step") if k not in raw]
    if missing:
        raise CheckpointError(f"{key}: {path} holds weights but no training state ({', '.join(missing)} missing), "
                              "so training cannot resume from it; use it as train.pretrained_model instead")
    return raw


def read_index(train_dir: Path) -> list[dict]:
    """Entries of checkpoints.json (empty when there is none yet)."""
    p = Path(train_dir) / INDEX
    return json.loads(p.read_text()) if p.is_file() else []


def write_index(train_dir: Path, entries: list[dict]) -> None:
    """Atomic rewrite of checkpoints.json."""
    write_json(Path(train_dir) / INDEX, entries)


def best_entry(entries: list[dict], metric: str = "mIoU") -> dict | None:
    """The entry with the highest metric whose file still exists."""
    scored = [e for e in entries if e.get("metrics", {}).get(metric) is not None and Path(e["path"]).is_file()]
    return max(scored, key=lambda e: (e["metrics"][metric], e["step"])) if scored else None


def keep_best_and_latest(train_dir: Path, metric: str = "mIoU") -> int:
    """Delete a finished run's other epoch checkpoints (an AutoML study would otherwise keep one per epoch per
    trial); the index keeps their metrics. Returns the bytes freed."""
    train_dir = Path(train_dir)
    entries = read_index(train_dir)
    best = best_entry(entries, metric)
    keep = {Path(best["path"]).resolve()} if best else set()
    if (latest := latest_link(train_dir)).exists():
        keep.add(latest.resolve())
    freed = 0
    for e in entries:
        path = Path(e["path"])
        if path.is_file() and path.resolve() not in keep:
            freed += path.stat().st_size
            path.unlink()
    return freed


def resolve(value: str | None, train_dir: Path, key: str, arch: str | None = None) -> Path:
    """An exact checkpoint path, or 'best' (by validation mIoU) / 'latest' (the `arch` network's link) from a train
    folder."""
    value = (value or "best").strip()
    if value not in ("best", "latest"):
        path = Path(value)
        if path.is_dir():
            return resolve("best", path, key, arch)
        if not path.is_file():
            raise CheckpointError(f"{key}: checkpoint {path} does not exist")
        return path
    train_dir = Path(train_dir)
    if value == "latest":
        latest = latest_link(train_dir, arch)
        if not latest.exists():
            raise CheckpointError(f"{key}=latest: no {latest.name} in {train_dir}; train first or give a path")
        return latest.resolve()
    entries = read_index(train_dir)
    best = best_entry(entries)
    if best is None:
        if not entries:
            raise CheckpointError(f"{key}=best: no {INDEX} with checkpoints in {train_dir}; train first or "
                                  f"set {key} to a .pth file")
        raise CheckpointError(f"{key}=best: no checkpoint in {train_dir / INDEX} has a validation mIoU; "
                              f"set {key} to a .pth file or 'latest'")
    log.info("%s=best: %s (mIoU %.4f)", key, best["path"], best["metrics"]["mIoU"])
    return Path(best["path"])
