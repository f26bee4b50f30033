"""SegFormer's MiT encoder weights in the original naming (NVlabs' SegFormer and its ImageNet mit_b0..b5.pth files)
as transformers' SegformerModel names them; written by hand because transformers converts only whole SegFormer
checkpoints, by a script, not a backbone state dict at load time."""

from __future__ import annotations

import re

import torch

_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q": "attention.q_proj",
          "attn.proj": "attention.o_proj", "attn.sr": "attention.sequence_reduction.sequence_reduction",
          "attn.norm": "attention.sequence_reduction.layer_norm", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
          "mlp.dwconv.dwconv": "mlp.dwconv.dwconv"}
_PATCH = re.compile(r"patch_embed(\d)\.(proj|norm)\.(weight|bias)$")
_BLOCK_KEY = re.compile(r"block(\d)\.(\d+)\.(.+)\.(weight|bias)$")
_NORM = re.compile(r"norm(\d)\.(weight|bias)$")


def is_original(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses the original MiT names (patch_embed1..., block1.0...)."""
    return any(_PATCH.match(k) for k in state)


def from_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original MiT names -> SegformerModel's (stages.<i>...); attn.kv is split into the key and value projections,
    the ImageNet classifier (head.*) dropped. Names already in transformers' form pass through (a `segformer.`
    prefix removed)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("backbone.").removeprefix("segformer.")
        if m := _PATCH.match(key):
            stage, part, kind = int(m[1]) - 1, m[2], m[3]
            out[f"stages.{stage}.patch_embeddings.{'proj' if part == 'proj' else 'layer_norm'}.{kind}"] = value
        elif m := _BLOCK_KEY.match(key):
            prefix, inner, kind = f"stages.{int(m[1]) - 1}.blocks.{m[2]}", m[3], m[4]
            if inner == "attn.kv":
                k, v = value.chunk(2, dim=0)
                out[f"{prefix}.attention.k_proj.{kind}"], out[f"{prefix}.attention.v_proj.{kind}"] = k, v
            elif inner in _BLOCK:
                out[f"{prefix}.{_BLOCK[inner]}.{kind}"] = value
        elif m := _NORM.match(key):
            out[f"stages.{int(m[1]) - 1}.layer_norm.{m[2]}"] = value
        elif not key.startswith("head."):
            out[key] = value
    return out
