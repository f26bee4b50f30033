"""transformers' OneFormerForUniversalSegmentation built from the spec or a checkpoint, its modes, and freezing."""

from __future__ import annotations

import fnmatch

from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

from oneformer.errors import CheckpointError
from oneformer.model.checkpoint import Checkpoint
from oneformer.spec import ModelConfig

Network = OneFormerForUniversalSegmentation


def hf_config(model: ModelConfig, class_names: list[str] | None = None) -> OneFormerConfig:
    """Map TAO's model keys onto transformers' OneFormerConfig (Swin backbone)."""
    swin = model.backbone.swin
    stages = [f"stage{i + 1}" for i in swin.out_indices]
    backbone = SwinConfig(
        image_size=swin.pretrain_img_size,
        patch_size=swin.patch_size,
        embed_dim=swin.embed_dim,
        depths=swin.depths,
        num_heads=swin.num_heads,
        window_size=swin.window_size,
        mlp_ratio=swin.mlp_ratio,
        qkv_bias=swin.qkv_bias,
        hidden_dropout_prob=swin.drop_rate,
        attention_probs_dropout_prob=swin.attn_drop_rate,
        drop_path_rate=swin.drop_path_rate,
        use_absolute_embeddings=swin.ape,
        out_features=stages,
    )
    head, seg, text = model.one_former, model.sem_seg_head, model.text_encoder
    n = seg.num_classes
    names = class_names or [f"class_{i}" for i in range(n)]
    return OneFormerConfig(
        backbone_config=backbone,
        num_labels=n,
        id2label={i: names[i] if i < len(names) else f"class_{i}" for i in range(n)},
        label2id={(names[i] if i < len(names) else f"class_{i}"): i for i in range(n)},
        ignore_value=seg.ignore_value,
        num_queries=head.num_object_queries,
        no_object_weight=head.no_object_weight,
        class_weight=head.class_weight,
        mask_weight=head.mask_weight,
        dice_weight=head.dice_weight,
        contrastive_weight=head.contrastive_weight,
        contrastive_temperature=head.contrastive_temperature,
        train_num_points=head.train_num_points,
        oversample_ratio=head.oversample_ratio,
        importance_sample_ratio=head.importance_sample_ratio,
        is_training=True,
        use_auxiliary_loss=head.deep_supervision,
        output_auxiliary_logits=False,
        task_seq_len=text.task_seq_len,
        text_encoder_width=text.width,
        text_encoder_context_length=text.context_length,
        text_encoder_num_layers=text.num_layers,
        text_encoder_vocab_size=text.vocab_size,
        text_encoder_proj_layers=text.proj_num_layers,
        text_encoder_n_ctx=text.n_ctx,
        conv_dim=seg.convs_dim,
        mask_dim=seg.mask_dim,
        hidden_dim=head.hidden_dim,
        encoder_feedforward_dim=seg.dim_feedforward,
        norm=seg.norm,
        encoder_layers=seg.transformer_enc_layers,
        decoder_layers=head.dec_layers,
        num_attention_heads=head.nheads,
        dim_feedforward=head.dim_feedforward,
        dropout=head.dropout,
        pre_norm=head.pre_norm,
        enforce_input_proj=head.enforce_input_proj,
        common_stride=seg.common_stride,
    )


def num_text(config: OneFormerConfig) -> int:
    """Length of the per-image class-text list: queries minus the learned text context."""
    return config.num_queries - config.text_encoder_n_ctx


def set_training_mode(net: Network, training: bool) -> None:
    """Switch OneFormer's own `is_training` flags (dropout, text mapper, contrastive loss) with the module mode.

    transformers stores the flag on several sub-modules at construction; `.eval()` alone leaves them on.
    """
    net.config.is_training = training
    for module in net.modules():
        if hasattr(module, "is_training"):
            module.is_training = training
    net.train(training)


def build_network(config: OneFormerConfig) -> Network:
    """A freshly initialized network (always with the text mapper, so checkpoints can resume training)."""
    config.is_training = True
    return OneFormerForUniversalSegmentation(config)


# TAO's (Detectron2's) OneFormer module names, as transformers' parameter-name prefixes
TAO_MODULES = {
    "backbone": ("model.pixel_level_module.encoder.",),
    "pixel_decoder": ("model.pixel_level_module.decoder.",),
    "transformer_decoder": ("model.transformer_module.",),
    "predictor": ("model.transformer_module.",),
    "sem_seg_head": ("model.pixel_level_module.decoder.", "model.transformer_module."),
    "sem_seg_head.pixel_decoder": ("model.pixel_level_module.decoder.",),  # Detectron2's full paths
    "sem_seg_head.predictor": ("model.transformer_module.",),
    "task_mlp": ("model.task_encoder.",),
    "text_encoder": ("model.text_mapper.text_encoder.",),
    "text_projector": ("model.text_mapper.text_projector.",),
    "prompt_ctx": ("model.text_mapper.prompt_ctx.",),
}


def freeze(net: Network, patterns: list[str]) -> int:
    """Freeze parameters named by TAO's module names (backbone, pixel_decoder, ...) or matching fnmatch patterns
    or prefixes of transformers' names; returns how many were frozen."""
    prefixes = [prefix for pat in patterns for prefix in TAO_MODULES.get(pat.rstrip(".*"), ())]
    raw = [pat for pat in patterns if pat.rstrip(".*") not in TAO_MODULES]
    count = 0
    for name, p in net.named_parameters():
        if name.startswith(tuple(prefixes)) or any(fnmatch.fnmatch(name, pat) or name.startswith(pat) for pat in raw):
            p.requires_grad_(False)
            count += 1
    if patterns and count == 0:
        raise CheckpointError(f"train.freeze {patterns} matches no parameter name: use TAO's module names "
                              f"({', '.join(TAO_MODULES)}) or patterns of the parameter names "
                              f"(model.pixel_level_module.encoder.*, ...)")
    return count


def freeze_stages(net: Network, freeze_at: int) -> int:
    """TAO's model.backbone.freeze_at, Detectron2's convention: 1 freezes the patch embedding (the stem), k > 1 also
    the first k-1 Swin stages; returns how many parameter tensors were frozen."""
    swin = "model.pixel_level_module.encoder.swin."
    prefixes = ([f"{swin}embeddings."] if freeze_at >= 1 else []) + [
        f"{swin}encoder.layers.{i}." for i in range(freeze_at - 1)]
    return freeze(net, prefixes) if prefixes else 0


def checkpoint_backbone(net: Network) -> bool:
    """Gradient checkpointing of the Swin backbone (transformers supports it there, not for the whole OneFormer):
    its activations are recomputed in backward instead of kept; False where the backbone cannot."""
    encoder = net.model.pixel_level_module.encoder
    if not getattr(encoder, "supports_gradient_checkpointing", False):
        return False
    encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return True


def is_backbone_param(name: str) -> bool:
    """Backbone parameters get lr * backbone_multiplier."""
    return ".pixel_level_module.encoder." in f".{name}"


def load_network(ckpt: Checkpoint, training: bool = False) -> Network:
    """The network with a checkpoint's weights, in inference mode unless asked otherwise."""
    net = build_network(OneFormerConfig.from_dict(ckpt.hf_config))
    missing, unexpected = net.load_state_dict(ckpt.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt.path}: weights do not match its own config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    set_training_mode(net, training)
    return net
