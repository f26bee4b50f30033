"""The network built from the spec: TAO keys mapped, shapes, train/eval switching, freezing."""

from __future__ import annotations

import pytest
import torch

from oneformer.data.tokenizer import TextTable
from oneformer.errors import CheckpointError
from oneformer.model.network import (
    build_network,
    checkpoint_backbone,
    freeze,
    freeze_stages,
    hf_config,
    num_text,
    set_training_mode,
)
from oneformer.presets import preset_path
from oneformer.spec import load_spec


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
    with pytest.raises(CheckpointError, match=r"matches no parameter name: use TAO's module names \(backbone, "):
        freeze(net, ["nothing.here*"])


@pytest.mark.parametrize(("names", "prefixes"), [
    (["backbone"], ["model.pixel_level_module.encoder."]),
    (["pixel_decoder", "transformer_decoder"], ["model.pixel_level_module.decoder.", "model.transformer_module."]),
    (["backbone.*", "sem_seg_head.predictor"], ["model.pixel_level_module.encoder.", "model.transformer_module."]),
    (["text_encoder", "prompt_ctx"], ["model.text_mapper.text_encoder.", "model.text_mapper.prompt_ctx."]),
])
def test_freeze_takes_taos_module_names(smoke, names: list[str], prefixes: list[str]) -> None:  # noqa: ANN001
    _, config, _ = smoke
    net = build_network(config)
    n = freeze(net, names)
    frozen = {k for k, p in net.named_parameters() if not p.requires_grad}
    assert n == len(frozen) > 0 and frozen == {k for k, _ in net.named_parameters() if k.startswith(tuple(prefixes))}


@pytest.mark.parametrize(("freeze_at", "stages"), [(0, None), (1, []), (3, [0, 1])])
def test_freeze_at_freezes_the_stem_and_the_first_stages(smoke, freeze_at: int, stages: list[int] | None) -> None:  # noqa: ANN001
    _, config, _ = smoke
    net = build_network(config)
    n = freeze_stages(net, freeze_at)
    frozen = {k for k, p in net.named_parameters() if not p.requires_grad}
    swin = "model.pixel_level_module.encoder.swin."
    want = set() if stages is None else {k for k, _ in net.named_parameters() if k.startswith(
        (f"{swin}embeddings.", *(f"{swin}encoder.layers.{i}." for i in stages)))}
    assert frozen == want and n == len(want)


def _saved_bytes_and_grads(net, x, text, config) -> tuple[int, float, dict]:  # noqa: ANN001
    """One training step: the bytes autograd keeps for backward, the loss, and the gradients."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    set_training_mode(net, True)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(pixel_values=x, task_inputs=torch.stack([text.task_ids["semantic"]] * 2),
                  text_inputs=torch.stack([text.text_inputs("semantic", torch.tensor([1]), num_text(config))] * 2),
                  mask_labels=[torch.ones(1, 64, 64)] * 2, class_labels=[torch.tensor([1])] * 2)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    return sum(saved), out.loss.item(), grads


def test_activation_checkpointing_recomputes_the_backbone_with_the_same_gradients(smoke) -> None:  # noqa: ANN001
    _, config, _ = smoke
    text = TextTable(list(config.id2label.values()), config.task_seq_len, config.text_encoder_context_length)
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    plain = build_network(config)
    checkpointed = build_network(config)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpoint_backbone(checkpointed)
    kept, loss, grads = _saved_bytes_and_grads(plain, x, text, config)
    kept_ckpt, loss_ckpt, grads_ckpt = _saved_bytes_and_grads(checkpointed, x, text, config)
    assert loss_ckpt == pytest.approx(loss, rel=1e-5) and grads.keys() == grads_ckpt.keys()
    assert all(torch.allclose(grads[k], grads_ckpt[k], rtol=1e-4, atol=1e-6) for k in grads)
    assert kept_ckpt < kept  # the backbone's activations were not kept
