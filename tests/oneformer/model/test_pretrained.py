"""Pretrained weights: transformers folders, Swin backbones in either naming, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oneformer.errors import CheckpointError
from oneformer.model.network import build_network, hf_config
from oneformer.model.pretrained import load_backbone, load_pretrained
from oneformer.presets import preset_path
from oneformer.spec import load_spec


@pytest.fixture(scope="module")
def config():  # noqa: ANN201 - a transformers OneFormerConfig
    return hf_config(load_spec(preset_path("smoke")).model, ["a", "b", "c", "d", "e", "f"])


def test_pretrained_from_transformers_folder_keeps_matching_tensors(config, tmp_path: Path) -> None:  # noqa: ANN001
    other = hf_config(load_spec(preset_path("smoke"), ["model.sem_seg_head.num_classes=3"]).model, ["x", "y", "z"])
    source = build_network(other)
    source.save_pretrained(tmp_path / "hf")
    net = build_network(config)
    load_pretrained(net, str(tmp_path / "hf"))
    mine, theirs = net.state_dict(), source.state_dict()
    encoder = "model.pixel_level_module.encoder.swin.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(mine[encoder], theirs[encoder])
    head = next(k for k in mine if k.endswith("class_embed.weight"))
    assert mine[head].shape != theirs[head].shape  # the 3-class head was skipped, not forced in


def test_pretrained_backbone_from_swin_folder(config, tmp_path: Path) -> None:  # noqa: ANN001
    from transformers import SwinModel

    swin = SwinModel(config.backbone_config)
    swin.save_pretrained(tmp_path / "swin")
    net = build_network(config)
    load_backbone(net, str(tmp_path / "swin"))
    key = "embeddings.patch_embeddings.projection.weight"
    assert torch.equal(net.model.pixel_level_module.encoder.state_dict()[f"swin.{key}"], swin.state_dict()[key])


def original_swin_state(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights as a Detectron2/TAO Swin checkpoint names them (fused qkv, norm1/norm2, per-stage norms)."""
    out = {}
    for key, value in hf.items():
        key = key.removeprefix("swin.")
        if ".attention.q_proj." in key:
            kind = key.rsplit(".", 1)[1]
            stem = key.replace("encoder.", "", 1).split(".attention.")[0]
            qkv = [hf[f"swin.{key}".replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[f"backbone.{stem}.attn.qkv.{kind}"] = torch.cat(qkv)
            continue
        if ".attention.k_proj." in key or ".attention.v_proj." in key:
            continue
        for a, b in (("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
                     ("embeddings.norm.", "patch_embed.norm."), ("encoder.layers.", "layers."),
                     ("layernorm_before", "norm1"), ("layernorm_after", "norm2"), ("attention.o_proj", "attn.proj"),
                     ("attention.relative_position_bias.", "attn."), ("layernorm.", "norm.")):
            key = key.replace(a, b)
        if key.startswith("hidden_states_norms.stage"):
            key = f"norm{int(key[len('hidden_states_norms.stage')]) - 1}.{key.rsplit('.', 1)[1]}"
        out[f"backbone.{key}"] = value
    return out


def test_pretrained_backbone_in_original_swin_naming(config, tmp_path: Path) -> None:  # noqa: ANN001
    source = build_network(config).model.pixel_level_module.encoder.state_dict()
    original = original_swin_state(source)
    assert "backbone.layers.0.blocks.0.attn.qkv.weight" in original and "backbone.norm3.weight" in original
    torch.save({"model": original}, tmp_path / "swin.pth")
    net = build_network(config)
    load_backbone(net, str(tmp_path / "swin.pth"))
    loaded = net.model.pixel_level_module.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items() if "relative_position_index" not in k)


def test_unreachable_pretrained_model_is_a_clear_error(config) -> None:  # noqa: ANN001
    with pytest.raises(CheckpointError, match="train.pretrained_model 'no-such/model'"):
        load_pretrained(build_network(config), "no-such/model")
