"""Swin backbone weights in the original naming (Microsoft's, Detectron2's, TAO's) renamed for transformers'
SwinBackbone: train.pretrained_backbone files and the backbone of Detectron2 OneFormer checkpoints."""

from __future__ import annotations

import re

import torch

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
