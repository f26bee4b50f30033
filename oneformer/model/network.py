"""transformers' networks (OneFormer, Mask2Former, SegFormer) built from the spec or a checkpoint, their forward
passes, modes, and freezing."""

from __future__ import annotations

import fnmatch

import torch
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    OneFormerConfig,
    OneFormerForUniversalSegmentation,
    PretrainedConfig,
    PreTrainedModel,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SwinConfig,
)

from oneformer.arch_spec import MIT_TYPES
from oneformer.errors import CheckpointError
from oneformer.model.checkpoint import Checkpoint
from oneformer.spec import ExperimentSpec, ModelConfig
from oneformer.spec import SwinConfig as SwinSpec

Network = PreTrainedModel  # one of NETWORKS' classes
# transformers' model_type of each network is the spec's model.arch
NETWORKS: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "oneformer": (OneFormerConfig, OneFormerForUniversalSegmentation),
    "mask2former": (Mask2FormerConfig, Mask2FormerForUniversalSegmentation),
    "segformer": (SegformerConfig, SegformerForSemanticSegmentation),
}


def _labels(names: list[str] | None, n: int) -> dict:
    """id2label / label2id for n classes, named where the label map names them."""
    names = [names[i] if names and i < len(names) else f"class_{i}" for i in range(n)]
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def network_config(spec: ExperimentSpec, class_names: list[str] | None = None) -> PretrainedConfig:
    """The transformers config of the spec's network (model.arch)."""
    if spec.arch == "mask2former":
        return mask2former_config(spec.model, class_names)
    if spec.arch == "segformer":
        return segformer_config(spec, class_names)
    return hf_config(spec.model, class_names)


def swin_config(swin: SwinSpec) -> SwinConfig:
    """TAO's model.backbone.swin as transformers' SwinConfig."""
    stages = [f"stage{i + 1}" for i in swin.out_indices]
    return SwinConfig(
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


def _query_head(model: ModelConfig, class_names: list[str] | None) -> dict:
    """The config values OneFormer and Mask2Former share under the same names: classes, queries, losses and
    matching, the pixel decoder's encoder and the transformer decoder."""
    head, seg = model.head, model.sem_seg_head
    return dict(
        backbone_config=swin_config(model.backbone.swin),
        num_labels=seg.num_classes,
        **_labels(class_names, seg.num_classes),
        ignore_value=seg.ignore_value,
        num_queries=head.num_object_queries,
        no_object_weight=head.no_object_weight,
        class_weight=head.class_weight,
        mask_weight=head.mask_weight,
        dice_weight=head.dice_weight,
        train_num_points=head.train_num_points,
        oversample_ratio=head.oversample_ratio,
        importance_sample_ratio=head.importance_sample_ratio,
        use_auxiliary_loss=head.deep_supervision,
        hidden_dim=head.hidden_dim,
        encoder_feedforward_dim=seg.dim_feedforward,
        encoder_layers=seg.transformer_enc_layers,
        decoder_layers=head.dec_layers,
        num_attention_heads=head.nheads,
        dim_feedforward=head.dim_feedforward,
        dropout=head.dropout,
        pre_norm=head.pre_norm,
        common_stride=seg.common_stride,
    )


def mask2former_config(model: ModelConfig, class_names: list[str] | None = None) -> Mask2FormerConfig:
    """Map TAO's Mask2Former keys onto transformers' Mask2FormerConfig (Swin backbone)."""
    return Mask2FormerConfig(**_query_head(model, class_names), feature_size=model.sem_seg_head.convs_dim,
                             mask_feature_size=model.sem_seg_head.mask_dim,
                             enforce_input_projection=model.mask_former.enforce_input_proj)


def segformer_config(spec: ExperimentSpec, class_names: list[str] | None = None) -> SegformerConfig:
    """Map TAO's SegFormer keys onto transformers' SegformerConfig (a MiT encoder by model.backbone.type)."""
    sizes, depths, width = MIT_TYPES[spec.model.backbone.type or "mit_b0"]
    head, n = spec.model.decode_head, spec.num_classes
    return SegformerConfig(num_labels=n, **_labels(class_names, n), hidden_sizes=sizes, depths=depths,
                           decoder_hidden_size=head.decoder_params.embed_dims or width,
                           classifier_dropout_prob=head.dropout_ratio,
                           semantic_loss_ignore_index=spec.dataset.ignore_value)


def hf_config(model: ModelConfig, class_names: list[str] | None = None) -> OneFormerConfig:
    """Map TAO's OneFormer keys onto transformers' OneFormerConfig (Swin backbone)."""
    head, seg, text = model.one_former, model.sem_seg_head, model.text_encoder
    return OneFormerConfig(
        **_query_head(model, class_names),
        contrastive_weight=head.contrastive_weight,
        contrastive_temperature=head.contrastive_temperature,
        is_training=True,
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
        norm=seg.norm,
        enforce_input_proj=head.enforce_input_proj,
    )


def num_text(config: OneFormerConfig) -> int:
    """Length of the per-image class-text list: queries minus the learned text context."""
    return config.num_queries - config.text_encoder_n_ctx


def set_training_mode(net: Network, training: bool) -> None:
    """Switch OneFormer's own `is_training` flags (dropout, text mapper, contrastive loss) with the module mode.

    transformers stores the flag on several sub-modules at construction; `.eval()` alone leaves them on.
    """
    if hasattr(net.config, "is_training"):
        net.config.is_training = training
    for module in net.modules():
        if hasattr(module, "is_training"):
            module.is_training = training
    net.train(training)


def build_network(config: PretrainedConfig) -> Network:
    """A freshly initialized network of the config's kind (OneFormer always with the text mapper, so checkpoints can
    resume training)."""
    if config.model_type == "oneformer":
        config.is_training = True
    return NETWORKS[config.model_type][1](config)


def uses_text(net: Network) -> bool:
    """OneFormer is conditioned on task text; Mask2Former and SegFormer are not."""
    return net.config.model_type == "oneformer"


def training_loss(net: Network, batch: dict) -> torch.Tensor:
    """The network's own training loss on a collated batch (see oneformer.data.datasets)."""
    if net.config.model_type == "segformer":
        return net(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
    text = {"task_inputs": batch["task_inputs"], "text_inputs": batch["text_inputs"]} if uses_text(net) else {}
    return net(pixel_values=batch["pixel_values"], mask_labels=batch["mask_labels"],
               class_labels=batch["class_labels"], pixel_mask=batch["pixel_mask"], **text).loss


def forward(net: Network, pixels: torch.Tensor, task_inputs: torch.Tensor | None = None, **targets: object
            ) -> dict[str, torch.Tensor]:
    """Inference outputs of any of the networks: class_logits [B, Q, C+1] and mask_logits [B, Q, h, w] of a
    query-based one (OneFormer with its task tokens), or SegFormer's per-class logits [B, C, H/4, W/4] as scores;
    with `targets` (mask_labels, class_labels) a query-based network's loss too."""
    if net.config.model_type == "segformer":
        return {"scores": net(pixel_values=pixels).logits}
    text = {"task_inputs": task_inputs} if uses_text(net) else {}
    out = net(pixel_values=pixels, **text, **targets)
    result = {"class_logits": out.class_queries_logits, "mask_logits": out.masks_queries_logits}
    return {**result, "loss": out.loss} if out.loss is not None else result


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
TEXT_MODULES = ("task_mlp", "text_encoder", "text_projector", "prompt_ctx")  # OneFormer's only
SEGFORMER_MODULES = {"backbone": ("segformer.",), "decode_head": ("decode_head.",)}  # the MiT encoder, the MLP head


def freeze(net: Network, patterns: list[str]) -> int:
    """Freeze parameters named by TAO's module names (backbone, pixel_decoder, ...) or matching fnmatch patterns
    or prefixes of transformers' names; returns how many were frozen."""
    kind = net.config.model_type
    modules = SEGFORMER_MODULES if kind == "segformer" else {k: v for k, v in TAO_MODULES.items() if uses_text(net)
                                                             or k not in TEXT_MODULES}
    prefixes = [prefix for pat in patterns for prefix in modules.get(pat.rstrip(".*"), ())]
    raw = [pat for pat in patterns if pat.rstrip(".*") not in modules]
    count = 0
    for name, p in net.named_parameters():
        if name.startswith(tuple(prefixes)) or any(fnmatch.fnmatch(name, pat) or name.startswith(pat) for pat in raw):
            p.requires_grad_(False)
            count += 1
    if patterns and count == 0:
        raise CheckpointError(f"train.freeze {patterns} matches no parameter name: use TAO's module names "
                              f"({', '.join(modules)}) or patterns of the parameter names "
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
    encoder = net.segformer if net.config.model_type == "segformer" else net.model.pixel_level_module.encoder
    if not getattr(encoder, "supports_gradient_checkpointing", False):
        return False
    encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return True


def is_backbone_param(name: str) -> bool:
    """Backbone parameters get lr * backbone_multiplier (Swin's, or SegFormer's MiT encoder)."""
    return ".pixel_level_module.encoder." in f".{name}" or name.startswith("segformer.")


def load_network(ckpt: Checkpoint, training: bool = False) -> Network:
    """The network with a checkpoint's weights, in inference mode unless asked otherwise."""
    kind = ckpt.hf_config.get("model_type", "oneformer")
    if kind not in NETWORKS:
        raise CheckpointError(f"{ckpt.path}: a {kind} network, not one of {', '.join(NETWORKS)}")
    net = build_network(NETWORKS[kind][0].from_dict(ckpt.hf_config))
    missing, unexpected = net.load_state_dict(ckpt.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt.path}: weights do not match its own config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    set_training_mode(net, training)
    return net
