"""The model section of the spec: the Swin backbone, the query-based heads, the text encoder and post-processing,
checked against the chosen architecture."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from oneformer.arch_spec import (
    MIT_TYPES,
    SWIN_TYPES,
    TITLES,
    Arch,
    DecodeHead,
    Mask2FormerHead,
    predicted_tasks,
)
from oneformer.sections import Section, section
from oneformer.spec.dataset import Task


class SwinConfig(Section):
    """Swin Transformer backbone, TAO's key names."""

    type: Literal["tiny", "small", "base", "large"] | None = Field(
        None, description="A released Swin size (TAO Mask2Former's key): sets embed_dim, depths, num_heads, "
                          "window_size and pretrain_img_size where those are not given")

    @model_validator(mode="before")
    @classmethod
    def _size_from_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") in SWIN_TYPES:
            keys = ("embed_dim", "depths", "num_heads", "window_size", "pretrain_img_size")
            data = {**dict(zip(keys, SWIN_TYPES[data["type"]])), **data}
        return data

    embed_dim: int = Field(192, gt=0, description="Channels of the patch embedding; stage i has embed_dim * 2^i")
    depths: list[int] = Field(default_factory=lambda: [2, 2, 18, 2], description="Swin blocks in each stage")
    num_heads: list[int] = Field(default_factory=lambda: [6, 12, 24, 48],
                                 description="Attention heads in each stage (one entry per entry of depths)")
    window_size: int = Field(12, gt=0, description="Side of the local attention window, in patches")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden size of each block's MLP, as a multiple of its channels")
    patch_size: int = Field(4, gt=0, description="Side of the square patches the image is embedded as, in pixels")
    patch_norm: bool = Field(True, description="transformers' Swin always layer-normalizes the patch embedding "
                                               "(Detectron2's default); false is refused")
    ape: bool = Field(False, description="Learned absolute position embedding added to the patch embedding "
                                         "(transformers' use_absolute_embeddings)")
    pretrain_img_size: int = Field(384, gt=0, description="Image size the backbone was pretrained at "
                                                          "(transformers' Swin image_size; sizes the absolute "
                                                          "position embedding when ape is on)")
    qkv_bias: bool = Field(True, description="Learned bias in the attention's query, key and value projections")
    qk_scale: float | None = Field(None, description="Attention scale; empty (or head_dim^-0.5, the only value "
                                                     "transformers' Swin computes) is accepted, another refused")
    attn_drop_rate: float = Field(0.0, ge=0, le=1, description="Dropout of the attention weights")
    drop_rate: float = Field(0.0, ge=0, le=1, description="Dropout of the patch embedding and of each block's "
                                                          "attention output")
    drop_path_rate: float = Field(0.3, ge=0, le=1, description="Stochastic depth: the rate of dropping a block's "
                                                               "residual branch, rising linearly from 0 to this "
                                                               "at the last block")
    out_features: list[str] = Field(default_factory=lambda: ["res2", "res3", "res4", "res5"],
                                    description="Detectron2's names of the stages in out_indices (stage i is "
                                                "res<i+2>); must name the same stages")
    out_indices: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], description="Stages whose feature maps "
                                                                                     "feed the pixel decoder")
    use_checkpoint: bool = Field(False, description="Swin's own name for train.activation_checkpoint: either "
                                                    "turns gradient checkpointing of the backbone on")

    @model_validator(mode="after")
    def _stages_match(self) -> SwinConfig:
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must have equal length")
        if any(not 0 <= i < len(self.depths) for i in self.out_indices) or not self.out_indices:
            raise ValueError(f"out_indices {self.out_indices} must be stages 0-{len(self.depths) - 1}")
        if not self.patch_norm:
            raise ValueError("patch_norm false: transformers' Swin always layer-normalizes the patch embedding, so a "
                             "network without that norm cannot be built here; set it true")
        names = [f"res{i + 2}" for i in self.out_indices]
        if list(self.out_features) != names:
            raise ValueError(f"out_features {self.out_features} must name the stages of out_indices "
                             f"{self.out_indices}: {names}")
        if self.qk_scale is not None:
            dims = {self.embed_dim * 2**i // h for i, h in enumerate(self.num_heads)}
            if any(abs(self.qk_scale - d**-0.5) > 1e-6 for d in dims):
                raise ValueError(f"qk_scale {self.qk_scale}: transformers' Swin scales attention by head_dim^-0.5 "
                                 f"({', '.join(f'{d**-0.5:.6g}' for d in sorted(dims))} here); set it empty")
        return self


class BackboneConfig(Section):
    """Backbone choice and its weights."""

    name: Literal["D2SwinTransformer", "swin"] = Field(
        "D2SwinTransformer", description="Backbone; both names (TAO's D2SwinTransformer, swin) build transformers' "
                                         "Swin Transformer from model.backbone.swin")
    type: str | None = Field(None, description="TAO's backbone type: swin (OneFormer, Mask2Former) or a MiT encoder "
                                               "mit_b0..mit_b5 (SegFormer; empty: mit_b0)")
    freeze_at: int = Field(0, ge=0, description="Detectron2's convention: 0 trains everything, 1 freezes the "
                                                "patch embedding, k > 1 also the first k-1 Swin stages")
    swin: SwinConfig = section(SwinConfig)

    @model_validator(mode="after")
    def _freeze_within_stages(self) -> BackboneConfig:
        if self.freeze_at > len(self.swin.depths) + 1:
            raise ValueError(f"freeze_at {self.freeze_at} exceeds the {len(self.swin.depths)} Swin stages + the "
                             f"patch embedding (at most {len(self.swin.depths) + 1})")
        return self


class OneFormerHead(Mask2FormerHead):
    """Transformer decoder and loss settings (TAO's model.one_former): Mask2Former's, plus the text contrast."""

    num_object_queries: int = Field(150, gt=0, description="Object queries of the transformer decoder: at most "
                                                           "this many segments per image; must exceed "
                                                           "model.text_encoder.n_ctx")
    hidden_dim: int = Field(256, gt=0, description="Channels of the transformer decoder's queries; must equal "
                                                   "model.text_encoder.width")
    dec_layers: int = Field(10, ge=2, description="Transformer decoder layers, counting the prediction from the "
                                                  "initial queries (transformers builds dec_layers - 1)")
    dropout: float = Field(0.1, ge=0, le=1, description="Decoder dropout; 0 for short runs (see specs/smoke.yaml)")
    enforce_input_proj: bool = Field(False, description="Always project the pixel decoder's features to hidden_dim "
                                                        "with a 1x1 conv (added anyway where "
                                                        "sem_seg_head.convs_dim differs)")
    contrastive_weight: float = Field(0.5, ge=0, description="Weight of the query-text contrastive loss")
    contrastive_temperature: float = Field(0.07, gt=0, description="Initial temperature of the contrastive loss "
                                                                   "(its learned logit scale starts at 1/this)")


class SemSegHead(Section):
    """Pixel decoder and class count (TAO's model.sem_seg_head)."""

    num_classes: int = Field(133, gt=0, description="Classes the network predicts (plus 'no object'); every "
                                                    "label-map class index must be below it")
    common_stride: int = Field(4, gt=0, description="Output stride of the pixel decoder's mask features (4: masks "
                                                    "at 1/4 of the input size)")
    convs_dim: int = Field(256, gt=0, description="Channels of the pixel decoder's feature maps")
    mask_dim: int = Field(256, gt=0, description="Channels of the per-pixel mask embedding the queries' masks are "
                                                 "computed from")
    transformer_enc_layers: int = Field(6, ge=0, description="Deformable-attention encoder layers of the pixel "
                                                             "decoder")
    dim_feedforward: int = Field(1024, gt=0, description="Hidden size of the pixel decoder encoder's feed-forward "
                                                         "layers")
    norm: Literal["GN"] = Field("GN", description="Normalization of the pixel decoder's convolutions: GN (group "
                                                  "norm), the only one transformers builds")
    ignore_value: int = Field(255, description="Void label stored in the network config (transformers' "
                                               "ignore_value); data and metrics use dataset.ignore_value")


class TextEncoder(Section):
    """The text encoder that embeds task and class text."""

    width: int = Field(256, ge=64, description="Must be >= 64 (heads = width // 64) and equal "
                                               "model.one_former.hidden_dim")
    context_length: int = Field(77, gt=0, description="Tokens of each class text ('a photo with a <class>'), "
                                                      "padded or cut to this length")
    num_layers: int = Field(6, gt=0, description="Transformer layers of the text encoder")
    vocab_size: int = Field(49408, gt=0, description="Token embeddings of the text encoder; 49408 covers the CLIP "
                                                     "BPE tokenizer used here")
    proj_num_layers: int = Field(2, gt=0, description="MLP layers projecting the encoded text onto the decoder's "
                                                      "query dimension")
    n_ctx: int = Field(16, gt=0, description="Learned context embeddings appended to the class-text queries; "
                                             "each image's text list holds num_object_queries - n_ctx entries")
    task_seq_len: int = Field(77, gt=0, description="Tokens of the task text ('the task is semantic', ...) fed "
                                                    "to the task MLP")


class TestConfig(Section):
    """Post-processing thresholds."""

    object_mask_threshold: float = Field(0.8, ge=0, le=1, description="Panoptic: queries whose class "
                                                                      "probability exceeds this are kept; "
                                                                      "instance inference draws only instances "
                                                                      "scoring at least this")
    overlap_threshold: float = Field(0.8, ge=0, le=1, description="Panoptic: a kept query's segment is dropped "
                                                                  "when the pixels it wins are below this share "
                                                                  "of its mask")
    test_topk_per_image: int = Field(100, gt=0, description="Instance: highest-scoring (query, class) pairs kept "
                                                            "per image")


class TaskToggling(Section):
    """Which tasks evaluation scores (training samples tasks by dataset.task_probability)."""

    semantic_on: bool = Field(True, description="Score the semantic task (mIoU, pixel accuracy)")
    instance_on: bool = Field(True, description="Score the instance task (mask AP); off for semantic-only "
                                                "ground truth")
    panoptic_on: bool = Field(True, description="Score the panoptic task (PQ, SQ, RQ); off for semantic-only "
                                                "ground truth")


class ModelConfig(Section):
    """Network architecture."""

    arch: Arch = Field("oneformer", description="The network: oneformer (one model for all three tasks, "
                                                "task-conditioned), mask2former (one task per model, model.mode) "
                                                "or segformer (semantic only, MiT encoder + MLP decoder); empty: "
                                                "the command's (`mask2former`, `segformer`), else the spec's "
                                                "shape (dataset.segment: segformer; model.mask_former, swin.type "
                                                "or TAO's img_dir/panoptic_json keys: mask2former)")
    mode: Task | None = Field(None, description="Mask2Former: the task the model is trained for and predicts "
                                                "(default panoptic, which also answers semantic and instance); "
                                                "SegFormer: semantic; OneFormer predicts all three (noted)")
    backbone: BackboneConfig = section(BackboneConfig)
    one_former: OneFormerHead = section(OneFormerHead)
    mask_former: Mask2FormerHead = section(Mask2FormerHead)
    sem_seg_head: SemSegHead = section(SemSegHead)
    text_encoder: TextEncoder = section(TextEncoder)
    decode_head: DecodeHead = section(DecodeHead)
    test: TestConfig = section(TestConfig)
    task_toggling: TaskToggling = section(TaskToggling)

    @model_validator(mode="after")
    def _fits_arch(self) -> ModelConfig:
        backbone = self.backbone.type
        if self.arch == "segformer":
            if backbone is not None and backbone not in MIT_TYPES:
                hint = " (TAO's FAN backbones are not in transformers)" if backbone.startswith("fan") else ""
                raise ValueError(f"backbone.type {backbone!r} is not a SegFormer encoder here{hint}: use one of "
                                 f"{', '.join(MIT_TYPES)}")
            channels = MIT_TYPES[backbone or "mit_b0"][0]
            if self.decode_head.in_channels not in (None, channels):
                raise ValueError(f"decode_head.in_channels {self.decode_head.in_channels} differs from "
                                 f"{backbone or 'mit_b0'}'s stages {channels}; leave it empty")
            if self.mode not in (None, "semantic"):
                raise ValueError(f"mode {self.mode!r}: SegFormer predicts the semantic task only")
            return self
        if backbone not in (None, "swin", "D2SwinTransformer"):
            raise ValueError(f"backbone.type {backbone!r}: {TITLES[self.arch]} is built on Swin here (swin); MiT "
                             "encoders are SegFormer's (model.arch: segformer)")
        if self.arch == "mask2former":
            return self
        if self.one_former.num_object_queries <= self.text_encoder.n_ctx:
            raise ValueError(
                f"model.one_former.num_object_queries ({self.one_former.num_object_queries}) must exceed "
                f"model.text_encoder.n_ctx ({self.text_encoder.n_ctx}): the text list holds queries - n_ctx"
            )
        if self.one_former.hidden_dim != self.text_encoder.width:
            raise ValueError(
                f"model.one_former.hidden_dim ({self.one_former.hidden_dim}) must equal model.text_encoder.width "
                f"({self.text_encoder.width}): the text queries are joined with the learned context along that "
                "dimension; change both together"
            )
        return self

    @property
    def head(self) -> Mask2FormerHead:
        """The transformer decoder section of a query-based network (one_former or mask_former)."""
        return self.mask_former if self.arch == "mask2former" else self.one_former

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the network predicts (see predicted_tasks)."""
        return predicted_tasks(self.arch, self.mode)

