"""Checkpoints written by other tools, read without running any of their code and renamed for transformers'
OneFormerForUniversalSegmentation: TAO's OneFormer (a PyTorch Lightning checkpoint, config kept as OmegaConf
objects), SHI-Labs / Detectron2 OneFormer (`.pth` with a "model" state dict, `.pkl` of numpy arrays) and plain
transformers state dicts. Such files carry no config of ours, so the spec's model section and dataset.label_map
describe the network; what the file lacks, holds in excess or holds in another shape is reported by name. The
names are converted in oneformer.model.detectron2_names; TAO's Lightning checkpoints hold them under "model.".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oneformer.errors import CheckpointError, DataError
from oneformer.model.checkpoint import (
    PREFIX,
    Checkpoint,
    from_content,
    is_ours,
    load_failure,
    read_checkpoint,
    weights_only_load,
)
from oneformer.model.detectron2_names import SPEC_SET, TEXT, UNUSED, Converted, from_detectron2, spec_differences
from oneformer.model.network import build_network, network_config
from oneformer.model.unpickle import load_restricted, stand_ins
from oneformer.spec import ExperimentSpec, public_dict

log = logging.getLogger(__name__)


def read_any(path: str | Path, key: str | None = None, mmap: bool = False, spec: ExperimentSpec | None = None
             ) -> Checkpoint:
    """One of our checkpoints (read weights-only), or with `spec` another tool's (TAO, SHI-Labs / Detectron2) of the
    network the spec describes, none of its code run; without `spec` such a file is refused as read_checkpoint does."""
    path = Path(path)
    if spec is None or not path.is_file():
        return read_checkpoint(path, key, mmap)
    if path.suffix.lower() == ".pkl":  # Detectron2's pickle of numpy arrays: never ours, and no torch file
        return read_foreign(path, spec, key)
    try:
        raw = weights_only_load(path, mmap)
    except Exception as exc:  # noqa: BLE001 - refused by the safe load: the restricted reader decides
        return read_foreign(path, spec, key, refused=load_failure(exc))
    return from_content(raw, path, key) if is_ours(raw) else read_foreign(path, spec, key, raw=raw)


DETECTRON2_ROOTS = ("backbone.", "sem_seg_head.", "task_mlp.", "text_encoder.", "text_projector.", "prompt_ctx.")
TRANSFORMERS_ROOTS = ("model.pixel_level_module.", "model.transformer_module.", "model.task_encoder.",
                      "model.text_mapper.")
WRAPPERS = ("", "model.", "module.", PREFIX, "model.module.", "module.model.")  # Lightning's, DDP's, ours


@dataclass
class Found:
    """Where a file keeps its weights and whose naming they use."""

    naming: str  # "TAO" (Lightning, Detectron2 names), "Detectron2" (SHI-Labs) or "transformers"
    entry: str  # the file's entry holding them ("state_dict", "model", or "" for a bare state dict)
    wrapper: str  # the prefix every name carries there ("model." in TAO's), removed from `tensors`
    tensors: dict[str, torch.Tensor]
    outside: list[str]  # tensor names without that prefix (not converted, reported as unexpected)


def _tensors(container: Any) -> dict[str, torch.Tensor]:
    """The tensors of a name -> value mapping, numpy arrays (Detectron2's .pkl) as tensors."""
    out: dict[str, torch.Tensor] = {}
    if not isinstance(container, dict):
        return out
    for name, value in container.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
            usable = value.flags.c_contiguous and value.flags.writeable  # (np.ascontiguousarray makes 0-d 1-d)
            out[name] = torch.from_numpy(value if usable else value.copy())
    return out


def detect_naming(raw: Any) -> Found | None:
    """Whose naming a loaded file uses (TAO, Detectron2, transformers) and where: the entry and name prefix that
    hold the most names of one naming; None when none does."""
    if not isinstance(raw, dict):
        return None
    entries = [(e, _tensors(raw[e])) for e in ("state_dict", "model") if isinstance(raw.get(e), dict)]
    entries.append(("", _tensors(raw)))
    best, score = None, 0
    for entry, tensors in entries:
        for wrapper in WRAPPERS:
            for naming, roots in (("Detectron2", DETECTRON2_ROOTS), ("transformers", TRANSFORMERS_ROOTS)):
                n = sum(1 for k in tensors if k.startswith(wrapper) and k[len(wrapper):].startswith(roots))
                if n > score:
                    best, score = (entry, wrapper, naming, tensors), n
    if best is None:
        return None
    entry, wrapper, naming, tensors = best
    if naming == "Detectron2" and entry == "state_dict":
        naming = "TAO"
    inside = {k[len(wrapper):]: v for k, v in tensors.items() if k.startswith(wrapper)}
    return Found(naming, entry, wrapper, inside, sorted(k for k in tensors if not k.startswith(wrapper)))


def _sample(names: list[str], n: int = 5) -> str:
    """The first few names, and how many more."""
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


@dataclass
class Report:
    """What reading a foreign checkpoint found: what loaded, what the network lacked or the file held in excess."""

    where: str
    naming: str
    loaded: list[str] = field(default_factory=list)  # network tensors the file supplied
    expected: int = 0  # network tensors a file is to supply (all but UNUSED and SPEC_SET)
    missing: list[str] = field(default_factory=list)  # network tensors the file lacks: initialized fresh
    unused: list[str] = field(default_factory=list)  # lacking too, but nothing reads them (UNUSED): initialized
    unexpected: list[str] = field(default_factory=list)  # the file's tensors with no place in the network
    ignored: list[str] = field(default_factory=list)  # the file's tensors dropped on purpose
    mismatched: list[str] = field(default_factory=list)  # "name: file (..) vs spec (..)"
    differences: list[str] = field(default_factory=list)  # model keys the weights show other values of
    stand_ins: list[str] = field(default_factory=list)  # classes of objects in the file that were not built

    def summary(self) -> str:
        """One log line: counts, and the first names of each kind."""
        text = f"{self.where}: {self.naming} checkpoint, {len(self.loaded)} of {self.expected} tensors loaded"
        if self.missing:
            note = " (the text mapper: used only by training's contrastive loss)" if all(
                n.startswith(TEXT) for n in self.missing) else ""
            text += f"; {len(self.missing)} missing, initialized fresh{note}: {_sample(self.missing)}"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected, not loaded: {_sample(self.unexpected)}"
        if self.mismatched:
            text += f"; {len(self.mismatched)} of another shape, initialized fresh: {_sample(self.mismatched, 3)}"
        if self.differences:
            text += f"; the file's network has {_sample(self.differences, 3)}"
        if self.unused:
            text += f"; {len(self.unused)} not in the file and unused by the network, initialized"
        if self.ignored:
            text += f"; {len(self.ignored)} ignored (buffers transformers computes, values the spec sets)"
        if self.stand_ins:
            text += f"; objects stood in for, not built: {_sample(self.stand_ins)}"
        return text


def _contents(raw: Any) -> str:
    """What a file holds, in a few words, for an error about a file that holds no OneFormer weights."""
    if not isinstance(raw, dict):
        return f"it holds a {type(raw).__name__}"
    tensors = {f"{e}.{k}" if e else k for e in ("state_dict", "model", "") for k in _tensors(
        raw.get(e) if e else raw)}
    found = f"{len(tensors)} tensor(s): {_sample(sorted(tensors), 3)}" if tensors else "no tensors"
    return f"entries {_sample([str(k) for k in raw], 6)}; {found}"


def _unrecognized(where: str, path: Path, raw: Any, refused: str | None) -> str:
    """The error for a file that is neither ours nor another tool's OneFormer checkpoint."""
    why = f" ({refused})" if refused else ""
    text = (f"{where}{path} is not a checkpoint of ours{why}, and read without running any of its code it holds no "
            f"OneFormer weights in TAO's, Detectron2's (SHI-Labs) or transformers' naming ({_contents(raw)}); give "
            "one written by `oneformer train`, or a TAO or SHI-Labs OneFormer checkpoint")
    if refused and "omegaconf" in refused:
        text += (". It looks like a TAO or Lightning checkpoint: its OmegaConf config was stood in for, not built, "
                 "and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD does not change this")
    return text


def _int(raw: Any, *names: str) -> int:
    """The first of `names` that the file holds as an integer (epoch, step), else 0."""
    for name in names:
        value = raw.get(name) if isinstance(raw, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


_UNREAD = object()


def read_foreign(path: str | Path, spec: ExperimentSpec, key: str | None = None, *, raw: Any = _UNREAD,
                 refused: str | None = None) -> Checkpoint:
    """Another tool's OneFormer checkpoint as one of ours: the network and label map from the spec, the weights
    renamed from the file, none of its code run. `raw`: the file's content when already loaded safely; `refused`:
    why the weights-only load refused it. Missing and unexpected tensors are logged; a file that fits too little is
    an error, and so is one of another network (naming the spec keys to set) unless `key` only initializes training
    (INITIALIZING_KEYS: tensors of another shape are then left fresh, as load_pretrained does with ours)."""
    path, where = Path(path), f"{key}: " if key else ""
    if not path.is_file():
        raise CheckpointError(f"{where}checkpoint {path} does not exist")
    if spec.arch != "oneformer":
        why = f" ({refused})" if refused else ""
        raise CheckpointError(f"{where}{path} is not a checkpoint of ours{why}. Other tools' checkpoints are read for "
                              f"OneFormer only; for {spec.arch} give one written by `{spec.arch} train`, a "
                              "transformers folder or hub id as train.pretrained_model, or the backbone's weights "
                              "as model.backbone.pretrained_weights / pretrained_backbone_path")
    if raw is _UNREAD:
        try:
            raw = load_restricted(path)
        except Exception as exc:  # noqa: BLE001 - whatever the failure, the file is unreadable as a checkpoint
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if "torch.storage._load_from_bytes" in text:  # torch's own way back would be torch.load(weights_only=False)
                text = "its tensors were pickled with plain pickle, which only an unsafe load rebuilds: use torch.save"
            why = f" ({refused})" if refused else ""
            raise CheckpointError(f"{where}{path} is not a checkpoint of ours{why} and cannot be read as another "
                                  f"tool's either ({text})") from None
    if isinstance(raw, dict) and raw.get("state_dict_encrypted"):
        raise CheckpointError(f"{where}{path} is a TAO checkpoint with encrypted weights (state_dict_encrypted): "
                              "decrypt it with TAO and its key, save the state dict, and give that file")
    found = detect_naming(raw)
    if found is None:
        raise CheckpointError(_unrecognized(where, path, raw, refused))
    from oneformer.data.datasets import read_labels  # here: that module brings Lightning, which inference needs not

    try:
        labels = read_labels(spec)
    except DataError as exc:
        raise CheckpointError(f"{where}{path} is a {found.naming} checkpoint, which carries no label map: {exc}") \
            from None
    if found.naming == "transformers":
        converted = Converted(dict(found.tensors), {k: k for k in found.tensors})
    else:
        converted = from_detectron2(found.tensors)
    for name in SPEC_SET:
        if name in converted.tensors:
            converted.tensors.pop(name)
            converted.ignored.append(converted.source.pop(name))
    with torch.random.fork_rng(devices=[]):  # the fill must not move the caller's random stream (seeded training)
        net = build_network(network_config(spec, labels.names))
    own = net.state_dict()
    report = Report(f"{where}{path}", found.naming, ignored=converted.ignored, stand_ins=stand_ins(raw))
    report.loaded = [k for k in own if k in converted.tensors and converted.tensors[k].shape == own[k].shape]
    reshaped = [k for k in own if k in converted.tensors and converted.tensors[k].shape != own[k].shape]
    report.mismatched = [f"{k}: file {tuple(converted.tensors[k].shape)} vs spec {tuple(own[k].shape)}"
                         for k in reshaped]
    absent = [k for k in own if k not in converted.tensors and k not in SPEC_SET]
    report.unused = [k for k in absent if UNUSED.match(k)]
    report.missing = [k for k in absent if not UNUSED.match(k)]
    report.expected = len([k for k in own if k not in SPEC_SET and not UNUSED.match(k)])
    report.unexpected = [f"{found.wrapper}{converted.source[k]}" for k in converted.tensors if k not in own] + [
        f"{found.wrapper}{k}" for k in converted.unmapped] + found.outside
    report.differences = spec_differences({k: tuple(v.shape) for k, v in converted.tensors.items()}, spec)
    _check(report, initializing=key in INITIALIZING_KEYS)
    noteworthy = report.missing or report.unexpected or report.mismatched or report.differences
    (log.warning if noteworthy else log.info)("%s", report.summary())
    state = {k: converted.tensors[k] if k in report.loaded else v for k, v in own.items()}
    return Checkpoint(path, state, json.loads(net.config.to_json_string()), labels.to_list(), labels.contiguous,
                      public_dict(spec), _int(raw, "epoch"), _int(raw, "global_step", "iteration"),
                      missing=tuple(report.missing + reshaped + report.unused))


MIN_SHARE = 0.5  # of the network's tensors a file must supply: below, it is not this network's checkpoint
# Keys whose checkpoint only initializes training: as with our own checkpoints there (load_pretrained), tensors of
# another shape (a head for other classes) are left initialized fresh and reported, not refused
INITIALIZING_KEYS = ("train.pretrained_model",)


def _check(report: Report, initializing: bool) -> None:
    """Refuse a file of another network, naming the spec keys to set (unless it only `initializing` training), or
    one that supplies too little of the spec's network."""
    differences = report.differences
    if (differences or report.mismatched) and not initializing:
        keys = f"set {'; '.join(differences)}" if differences else (
            "compare the spec's model section with the config the checkpoint was trained with")
        if any(d.startswith("model.sem_seg_head.num_classes") for d in differences):
            keys += "; dataset.label_map must then list as many classes"
        shapes_text = f" ({len(report.mismatched)} tensors differ in shape, e.g. {_sample(report.mismatched, 2)})" \
            if report.mismatched else ""
        raise CheckpointError(f"{report.where} ({report.naming} checkpoint) holds another network than the spec's "
                              f"model section describes{shapes_text}: {keys}. A checkpoint from elsewhere carries no "
                              "config, so the spec must describe its network")
    lacking = [n for n in report.missing if not n.startswith(TEXT)]  # the text mapper: training's loss only
    if lacking and not initializing:
        raise CheckpointError(f"{report.where} ({report.naming} checkpoint) lacks {len(lacking)} tensors the network "
                              f"predicts with ({_sample(lacking, 3)}): they would be random. Give the whole "
                              "checkpoint, or use it as train.pretrained_model, where what a file lacks is trained")
    if len(report.loaded) < MIN_SHARE * report.expected:
        found = [f"{what} e.g. {_sample(names, 3)}" for what, names in (
            ("missing", report.missing), ("of another shape", report.mismatched),
            ("unmatched in the file", report.unexpected)) if names]
        keys = f"; its network has {_sample(differences, 4)}" if differences else ""
        raise CheckpointError(f"{report.where} ({report.naming} checkpoint): only {len(report.loaded)} of "
                              f"{report.expected} tensors of the spec's network are in it ({'; '.join(found)}){keys}; "
                              "check that it is a OneFormer checkpoint and that the spec's model section describes "
                              "its network")
