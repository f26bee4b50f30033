"""SegFormer's MiT encoder weights in NVlabs' naming load as transformers' SegformerModel names them."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from oneformer.model.mit_names import from_original, is_original
from oneformer.model.network import build_network, network_config
from oneformer.model.pretrained import load_backbone
from oneformer.spec import build_spec

# transformers' names -> NVlabs' (what an ImageNet mit_b0.pth holds), the inverse of the table under test
INVERSE = [(r"stages\.(\d)\.patch_embeddings\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj."),
           (r"stages\.(\d)\.patch_embeddings\.layer_norm\.", lambda m: f"patch_embed{int(m[1]) + 1}.norm."),
           (r"stages\.(\d)\.layer_norm\.", lambda m: f"norm{int(m[1]) + 1}."),
           (r"stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}.")]
PARTS = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.q_proj": "attn.q",
         "attention.o_proj": "attn.proj", "attention.sequence_reduction.sequence_reduction": "attn.sr",
         "attention.sequence_reduction.layer_norm": "attn.norm"}


def original_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in INVERSE:
            key = re.sub(pattern, repl, key)
        for ours, theirs in PARTS.items():
            key = key.replace(f".{ours}.", f".{theirs}.")
        out[key] = value
    kv = {}
    for key in [k for k in out if ".attention.k_proj." in k]:
        kind = key.rsplit(".", 1)[1]
        base = key.split(".attention.k_proj.")[0]
        kv[f"{base}.attn.kv.{kind}"] = torch.cat([out.pop(key), out.pop(f"{base}.attention.v_proj.{kind}")])
    return {**out, **kv, "head.weight": torch.zeros(1000, 256)}


def test_an_original_mit_file_initializes_the_encoder_exactly(tmp_path: Path) -> None:
    spec = build_spec({"model": {"arch": "segformer"}, "dataset": {"segment": {"num_classes": 3}}})
    torch.manual_seed(0)
    source = build_network(network_config(spec)).segformer.state_dict()
    original = original_names(source)
    assert is_original(original) and not is_original(source)
    assert from_original(original).keys() == source.keys()
    torch.save(original, tmp_path / "mit_b0.pth")
    torch.manual_seed(1)
    net = build_network(network_config(spec))
    load_backbone(net, str(tmp_path / "mit_b0.pth"))
    assert all(torch.equal(v, source[k]) for k, v in net.segformer.state_dict().items())
