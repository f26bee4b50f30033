"""Pretrained weights: our checkpoints, TAO / Detectron2 OneFormer checkpoints, transformers folders or hub ids,
Swin backbones in the original (Microsoft / Detectron2 / TAO) naming (renamed by oneformer.model.swin_names), and
SegFormer's MiT encoders in NVlabs' naming (oneformer.model.mit_names)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import SegformerModel, SwinModel

from oneformer.errors import CheckpointError
from oneformer.model import mit_names
from oneformer.model.checkpoint import FILE_SUFFIXES, safe_load
from oneformer.model.foreign import read_any
from oneformer.model.network import NETWORKS, Network
from oneformer.model.swin_names import from_original

if TYPE_CHECKING:
    from oneformer.spec import ExperimentSpec

log = logging.getLogger(__name__)

def hf_state(cls: type, source: str, key: str) -> dict[str, torch.Tensor]:
    """The state dict of a transformers folder or hub id, or a clear error naming the spec key."""
    try:
        return cls.from_pretrained(source).state_dict()
    except OSError as exc:
        raise CheckpointError(f"{key} {source!r}: not a weights file, a transformers folder, "
                              f"or a reachable hub id ({exc})") from exc


def load_pretrained(net: Network, source: str, spec: ExperimentSpec | None = None) -> None:
    """Initialize from one of our checkpoints, a transformers folder, or a hub id (shape-matching keys only); with
    `spec`, also from a TAO or SHI-Labs / Detectron2 OneFormer checkpoint of the network the spec describes (the
    tensors such a file lacks keep the network's own initialization)."""
    path = Path(source)
    if path.suffix.lower() in FILE_SUFFIXES and path.is_file():
        ckpt = read_any(path, "train.pretrained_model", spec=spec)
        fresh = set(ckpt.missing)
        state = {k: v for k, v in ckpt.state_dict.items() if k not in fresh}
    else:
        state = hf_state(NETWORKS[net.config.model_type][1], source, "train.pretrained_model")
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in state if k not in usable]
    net.load_state_dict(usable, strict=False)
    log.info("pretrained %s: loaded %d tensors, skipped %d (shape or name differ)", source, len(usable), len(skipped))
    if not usable:
        raise CheckpointError(f"pretrained weights {source} share no tensors with this model")


def load_backbone(net: Network, source: str) -> None:
    """Initialize the backbone (Swin, or SegFormer's MiT encoder) from a transformers folder/id or a state-dict file
    (either naming)."""
    mit = net.config.model_type == "segformer"
    backbone = net.segformer if mit else net.model.pixel_level_module.encoder
    path = Path(source)
    if path.is_file():
        state = safe_load(path, "train.pretrained_backbone")
        state = state.get("model", state.get("state_dict", state))
    else:
        state = hf_state(SegformerModel if mit else SwinModel, source, "train.pretrained_backbone")
    own = backbone.state_dict()
    renamed = mit_names.from_original(state) if mit else from_original(state)
    usable = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"train.pretrained_backbone {source}: no tensor matches the "
                              f"{'MiT encoder' if mit else 'Swin backbone'} (is it the model.backbone.type's?)")
    mismatched = sorted(k for k in renamed if k in own and k not in usable)
    if mismatched:
        log.warning("pretrained backbone %s: %d tensors differ in shape (e.g. %s)", source, len(mismatched),
                    mismatched[0])
    backbone.load_state_dict(usable, strict=False)
    log.info("pretrained backbone %s: loaded %d of %d tensors", source, len(usable), len(own))
