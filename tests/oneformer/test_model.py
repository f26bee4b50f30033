"""The network built from the spec: shapes, train/eval switching, freezing."""

from __future__ import annotations

import pytest
import torch

from oneformer.errors import CheckpointError
from oneformer.model import (
    build_network,
    freeze,
    hf_config,
    load_backbone,
    load_pretrained,
    num_text,
    set_training_mode,
)
from oneformer.presets import preset_path
from oneformer.spec import load_spec
from oneformer.tokenizer import TextTable


@pytest.fixture(scope="module")
def smoke():  # noqa: ANN201
    spec = load_spec(preset_path("smoke"))
    config = hf_config(spec.model, ["a", "b", "c", "d", "e", "f"])
    return spec, config, build_network(config)


def test_tao_keys_map_onto_transformers_config(smoke) -> None:  # noqa: ANN001
    spec, config, _ = smoke
    assert config.backbone_config.embed_dim == spec.model.backbone.swin.embed_dim
    assert config.backbone_config.depths == [1, 1, 2, 1]
    assert config.num_queries == 12 and config.num_labels == 6 and config.id2label[5] == "f"
    assert num_text(config) == 12 - 4


def test_forward_shapes_and_loss(smoke) -> None:  # noqa: ANN001
    _, config, net = smoke
    text = TextTable(list(config.id2label.values()), config.task_seq_len, config.text_encoder_context_length)
    x = torch.randn(2, 3, 64, 64)
    set_training_mode(net, True)
    out = net(pixel_values=x, task_inputs=torch.stack([text.task_ids["panoptic"]] * 2),
              text_inputs=torch.stack([text.text_inputs("panoptic", torch.tensor([1]), num_text(config))] * 2),
              mask_labels=[torch.ones(1, 64, 64)] * 2, class_labels=[torch.tensor([1])] * 2)
    assert out.loss.ndim <= 1 and torch.isfinite(out.loss).all()
    set_training_mode(net, False)
    with torch.no_grad():
        a = net(pixel_values=x, task_inputs=torch.stack([text.task_ids["semantic"]] * 2))
        b = net(pixel_values=x, task_inputs=torch.stack([text.task_ids["semantic"]] * 2))
    assert a.class_queries_logits.shape == (2, 12, 7) and a.masks_queries_logits.shape == (2, 12, 16, 16)
    assert torch.equal(a.masks_queries_logits, b.masks_queries_logits)  # eval is deterministic
    assert not net.model.is_training and not net.config.is_training


def test_freeze_patterns(smoke) -> None:  # noqa: ANN001
    _, config, _ = smoke
    net = build_network(config)
    n = freeze(net, ["model.pixel_level_module.encoder*"])
    assert n > 0
    assert all(not p.requires_grad for k, p in net.named_parameters() if "pixel_level_module.encoder" in k)
    with pytest.raises(CheckpointError, match="matches no parameter"):
        freeze(net, ["nothing.here*"])


def test_pretrained_from_transformers_folder_keeps_matching_tensors(smoke, tmp_path) -> None:  # noqa: ANN001
    _, config, _ = smoke
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


def test_pretrained_backbone_from_swin_folder(smoke, tmp_path) -> None:  # noqa: ANN001
    from transformers import SwinModel

    _, config, _ = smoke
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


def test_pretrained_backbone_in_original_swin_naming(smoke, tmp_path) -> None:  # noqa: ANN001
    _, config, _ = smoke
    source = build_network(config).model.pixel_level_module.encoder.state_dict()
    original = original_swin_state(source)
    assert "backbone.layers.0.blocks.0.attn.qkv.weight" in original and "backbone.norm3.weight" in original
    torch.save({"model": original}, tmp_path / "swin.pth")
    net = build_network(config)
    load_backbone(net, str(tmp_path / "swin.pth"))
    loaded = net.model.pixel_level_module.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items() if "relative_position_index" not in k)


def test_unreachable_pretrained_model_is_a_clear_error(smoke) -> None:  # noqa: ANN001
    _, config, _ = smoke
    with pytest.raises(CheckpointError, match="train.pretrained_model 'no-such/model'"):
        load_pretrained(build_network(config), "no-such/model")
