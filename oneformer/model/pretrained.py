"""Pretrained weights: our checkpoints, transformers folders or hub ids, and Swin backbones in the original
(Microsoft / Detectron2 / TAO) naming, renamed for transformers."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from transformers import OneFormerForUniversalSegmentation, SwinModel

from oneformer.errors import CheckpointError
from oneformer.model.checkpoint import read_checkpoint, safe_load
from oneformer.model.network import Network

log = logging.getLogger(__name__)

PREFIXES = ("module.", "backbone.", "model.pixel_level_module.encoder.", "encoder.")
RENAMES = [  # (pattern on the original key, replacement in SwinBackbone's naming)
    (r"^patch_embed\.proj\.", "swin.embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", "swin.embeddings.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm1\.", r"swin.encoder.layers.\1.blocks.\2.layernorm_before."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm2\.", r"swin.encoder.layers.\1.blocks.\2.layernorm_after."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.", r"swin.encoder.layers.\1.blocks.\2.attention.o_proj."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$",
     r"swin.encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.", r"swin.encoder.layers.\1.blocks.\2.mlp."),
    (r"^layers\.(\d+)\.downsample\.", r"swin.encoder.layers.\1.downsample."),
    (r"^norm(\d)\.", lambda m: f"hidden_states_norms.stage{int(m.group(1)) + 1}."),  # Detectron2's per-stage norms
    (r"^norm\.", "swin.layernorm."),
]
QKV = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def strip_prefix(key: str) -> str:
    """Drop wrapper prefixes (DDP's module., Detectron2's backbone., our network's path)."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def from_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original-Swin keys (fused qkv split into q/k/v); keys already in transformers' naming pass through."""
    out: dict[str, torch.Tensor] = {}
    for raw, value in state.items():
        key = strip_prefix(raw)
        if key.startswith(("swin.", "hidden_states_norms.")):
            out[key] = value
            continue
        if match := QKV.match(key):
            layer, block, kind = match.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"swin.encoder.layers.{layer}.blocks.{block}.attention.{name}.{kind}"] = part
            continue
        for pattern, repl in RENAMES:
            new = re.sub(pattern, repl, key)
            if new != key:
                out[new] = value
                break
        else:
            if key.startswith(("embeddings.", "encoder.", "layernorm.")):  # a plain SwinModel state dict
                out[f"swin.{key}"] = value
    return out


def hf_state(cls: type, source: str, key: str) -> dict[str, torch.Tensor]:
    """The state dict of a transformers folder or hub id, or a clear error naming the spec key."""
    try:
        return cls.from_pretrained(source).state_dict()
    except OSError as exc:
        raise CheckpointError(f"{key} {source!r}: not a weights file, a transformers folder, "
                              f"or a reachable hub id ({exc})") from exc


def load_pretrained(net: Network, source: str) -> None:
    """Initialize from one of our checkpoints, a transformers folder, or a hub id (shape-matching keys only)."""
    path = Path(source)
    if path.suffix in (".pth", ".ckpt") and path.is_file():
        state = read_checkpoint(path, "train.pretrained_model").state_dict
    else:
        state = hf_state(OneFormerForUniversalSegmentation, source, "train.pretrained_model")
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in state if k not in usable]
    net.load_state_dict(usable, strict=False)
    log.info("pretrained %s: loaded %d tensors, skipped %d (shape or name differ)", source, len(usable), len(skipped))
    if not usable:
        raise CheckpointError(f"pretrained weights {source} share no tensors with this model")


def load_backbone(net: Network, source: str) -> None:
    """Initialize the Swin backbone from a transformers Swin folder/id or a state-dict file (either naming)."""
    backbone = net.model.pixel_level_module.encoder
    path = Path(source)
    if path.is_file():
        state = safe_load(path, "train.pretrained_backbone")
        state = state.get("model", state.get("state_dict", state))
    else:
        state = hf_state(SwinModel, source, "train.pretrained_backbone")
    own = backbone.state_dict()
    renamed = from_original(state)
    usable = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"train.pretrained_backbone {source}: no tensor matches the Swin backbone")
    mismatched = sorted(k for k in renamed if k in own and k not in usable)
    if mismatched:
        log.warning("pretrained backbone %s: %d tensors differ in shape (e.g. %s)", source, len(mismatched),
                    mismatched[0])
    backbone.load_state_dict(usable, strict=False)
    log.info("pretrained backbone %s: loaded %d of %d tensors", source, len(usable), len(own))
