"""The experiment spec: pydantic models with TAO's key names (OneFormer, Mask2Former, SegFormer), loading and
overrides."""

from __future__ import annotations

import copy
import difflib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from oneformer.arch_spec import (
    ARCHS,
    MIT_TYPES,
    OWNED,
    SEGFORMER_DERIVED,
    SWIN_TYPES,
    TITLES,
    Arch,
    DecodeHead,
    Mask2FormerHead,
    SegmentConfig,
    differs,
    predicted_tasks,
)
from oneformer.errors import SpecError
from oneformer.secrets import redact
from oneformer.sections import Section, section, tunable

log = logging.getLogger(__name__)

Task = Literal["semantic", "instance", "panoptic"]
# ImageNet statistics on the 0-255 scale: the spec's default and what a model file without its own falls back to.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


# ----------------------------------------------------------------------------- dataset
class SplitConfig(Section):
    """One dataset split: images, annotations and (for panoptic) the segment PNG folder."""

    images: str | None = Field(None, description="Image folder, .tar.gz archive or URL (s3://, file://)")
    annotations: str | None = Field(
        None, description="COCO panoptic JSON, COCO instance JSON, or semantic JSONL"
    )
    panoptic: str | None = Field(None, description="Folder or archive of COCO panoptic PNGs")
    format: Literal["auto", "coco_panoptic", "coco", "semantic", "masks"] = Field(
        "auto", description="Annotation format; auto detects it from the annotation file (masks: annotations is a "
                            "folder of label-id PNGs named like the images, SegFormer's layout)"
    )
    batch_size: int = Field(1, ge=1, description="Images per step (train, val: per process); test: per forward "
                                                 "pass of evaluate when evaluate.batch_size is empty")
    num_workers: int = Field(2, ge=0, description="Loader processes decoding and resizing this split's images "
                                                  "(0: in the main process)")
    target_size: list[int] | None = Field(None, description="TAO Mask2Former's fixed evaluation size [H, W] (or "
                                                            "[S]): every image of this split is resized to it "
                                                            "when scored; empty: the shortest side at "
                                                            "augmentation.test_min_size")

    @field_validator("target_size", mode="before")
    @classmethod
    def _target_hw(cls, v: Any) -> Any:
        if isinstance(v, int):
            v = [v]
        if isinstance(v, list) and len(v) == 1:
            v = [v[0], v[0]]
        if isinstance(v, list) and (len(v) != 2 or min(v) <= 0):
            raise ValueError("must be [height, width] with positive values")
        return v


class AugmentationConfig(Section):
    """Training and test resizing, as in TAO's dataset.augmentation."""

    train_min_size: list[int] = Field(
        default_factory=lambda: [512, 576, 640, 704, 768, 832, 896, 960, 1024],
        description="Shortest-side sizes sampled for random resize",
    )
    train_max_size: int = Field(2048, gt=0, description="Longest side cap after random resize")
    train_crop_size: list[int] = Field(default_factory=lambda: [1024, 1024], description="Crop [H, W]")
    test_min_size: int = Field(1024, gt=0, description="Shortest side at evaluation")
    test_max_size: int = Field(2048, gt=0, description="Longest side cap at evaluation")
    fixed_padding: bool = Field(True, description="Pad every image to the crop size (stable memory)")
    random_flip: bool = Field(True, description="Horizontal flip with probability 0.5")
    min_scale: float = tunable(0.5, 0.1, 1.0, description="Smallest random-resize scale of the crop size")
    max_scale: float = tunable(2.0, 1.0, 4.0, description="Largest random-resize scale of the crop size")

    @field_validator("train_crop_size")
    @classmethod
    def _two_sizes(cls, v: list[int]) -> list[int]:
        if len(v) == 1:
            v = [v[0], v[0]]
        if len(v) != 2 or min(v) <= 0:
            raise ValueError("must be [height, width] with positive values")
        return v


class TaskProbability(Section):
    """How often each task is sampled per training image (OneFormer's task-conditioned training)."""

    semantic: float = Field(0.33, ge=0, description="Relative weight of the semantic task (the three are "
                                                    "normalized to sum to 1)")
    instance: float = Field(0.33, ge=0, description="Relative weight of the instance task")
    panoptic: float = Field(0.34, ge=0, description="Relative weight of the panoptic task")

    @model_validator(mode="after")
    def _some_task(self) -> TaskProbability:
        if self.semantic + self.instance + self.panoptic <= 0:
            raise ValueError("at least one task probability must be positive")
        return self


class CalibrationConfig(Section):
    """Images used to calibrate INT8 quantization."""

    images_dir: str | None = Field(None, description="Folder, .tar.gz archive or URL of calibration images")


class DatasetConfig(Section):
    """Data sources, label map and preprocessing."""

    train: SplitConfig = section(SplitConfig)
    val: SplitConfig = section(SplitConfig)
    test: SplitConfig = section(SplitConfig)
    label_map: str | None = Field(None, description="JSON list of {id, name, isthing, color}")
    contiguous_id: bool = Field(True, description="Map raw category ids to 0..N-1 in label-map order")
    image_size: int = Field(1024, gt=0, description="TAO's evaluation and inference size: the default of "
                                                   "augmentation.test_min_size (shortest side at evaluation) and of "
                                                   "inference.image_size ([image_size, image_size]) where those are "
                                                   "not given")
    pixel_mean: list[float] = Field(default_factory=lambda: list(PIXEL_MEAN),
                                    description="Per-channel RGB mean subtracted from every image, on the 0-255 "
                                                "scale (kept in the checkpoint for evaluation, export, inference)")
    pixel_std: list[float] = Field(default_factory=lambda: list(PIXEL_STD),
                                   description="Per-channel RGB standard deviation every image is divided by, on "
                                               "the 0-255 scale (kept in the checkpoint)")
    augmentation: AugmentationConfig = section(AugmentationConfig)
    task_probability: TaskProbability = section(TaskProbability)
    quant_calibration_dataset: CalibrationConfig = section(CalibrationConfig)
    ignore_value: int = Field(255, description="Label of void pixels in semantic maps")
    segment: SegmentConfig = section(SegmentConfig)


# ----------------------------------------------------------------------------- model
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


# ----------------------------------------------------------------------------- train
class OptimConfig(Section):
    """Optimizer and learning-rate schedule."""

    type: Literal["AdamW", "SGD"] = Field("AdamW", description="Optimizer: AdamW (momentum is its beta1) or SGD "
                                                              "with momentum")
    lr: float = tunable(1e-4, 1e-6, 1e-2, "log", description="Learning rate of everything but the backbone")
    backbone_multiplier: float = tunable(0.1, 0.01, 1.0, "log", description="Backbone lr = lr * this")
    momentum: float = tunable(0.9, 0.5, 0.99, description="SGD momentum / AdamW beta1")
    weight_decay: float = tunable(0.05, 1e-5, 0.1, "log", description="Weight decay of every trained parameter")
    lr_scheduler: Literal["MultiStep", "StepLR", "Poly", "Cosine", "Constant"] = Field(
        "MultiStep", description="Per-step schedule after warm-up: MultiStep (lr *= gamma at each milestone), "
                                 "StepLR (every step_size epochs), Poly (power 0.9 to 0), Cosine (to 0), Constant")
    milestones: list[int] = Field(default_factory=lambda: [44, 48], description="Epochs where lr *= gamma")
    gamma: float = Field(0.1, gt=0, description="Factor the lr is multiplied by at each MultiStep or StepLR decay")
    step_size: int = Field(10, gt=0, description="Epochs between decays for StepLR")
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up length in epochs")
    monitor_name: Literal["val_loss", "train_loss", "mIoU"] = Field(
        "mIoU", description="TAO's checkpoint monitor; here 'best' is always the highest validation mIoU (the "
                            "pipeline selects by it), so val_loss / train_loss are noted and not used")


class TensorBoardConfig(Section):
    """TAO's TensorBoard switch (train.tensorboard): metrics go to MLflow here."""

    enabled: bool = Field(False, description="TensorBoard logging; true is noted: every metric is in MLflow")
    infrequent_logging_frequency: int = Field(1, ge=1, description="TAO's image-logging interval; informational")


class TrainConfig(Section):
    """Training loop, devices and checkpoints."""

    num_gpus: int = Field(1, ge=0, description="Devices; 0 or no CUDA means CPU")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPUs to train on, one process each; "
                                                                        "where num_gpus is larger, that many "
                                                                        "(TAO's rule: the larger wins)")
    num_nodes: int = Field(1, ge=1, description="Machines of the DDP job, each running its own processes; > 1 is "
                                                "multi-node")
    num_processes: int = Field(
        1, ge=1, description="Training on CPU (num_gpus 0 or no CUDA): DDP processes on this machine (gloo), each "
                             "with dataset.train.batch_size images and a share of the cores; GPUs use num_gpus and "
                             "gpu_ids, one process each")
    seed: int = Field(1234, ge=0, description="Seed of Python, NumPy, torch, the loader workers and the DDP "
                                              "shuffle; automl.sampler is seeded from it too")
    verify_data: Literal["decode", "headers"] = Field(
        "decode", description="What training checks of every image and mask before its first step: decode them all "
                              "(a corrupt file fails in seconds; about 3 ms a 640 px file on 2 cores, once per "
                              "process) or read their headers only (sizes and formats; for very large datasets "
                              "already checked with `oneformer check --deep`)")
    num_epochs: int = Field(50, gt=0, description="Epochs to train")
    checkpoint_interval: int = Field(1, gt=0, description="Save a checkpoint (model_epoch_EEE_step_SSSSS.pth) "
                                                          "every this many epochs, and after the last")
    validation_interval: int = Field(1, gt=0, description="Validate (mIoU on dataset.val) every this many epochs")
    iters_per_epoch: int | None = Field(None, gt=0, description="Limit batches per epoch")
    results_dir: str | None = Field(None, description="Training folder (checkpoints, index, status); default "
                                                      "<results_dir>/train")
    resume_training_checkpoint_path: str | None = Field(
        None, description="Checkpoint to resume from (weights, optimizer and loop state); empty: the training "
                          "folder's newest checkpoint, if any")
    pretrained_model: str | None = Field(None, description="Our checkpoint, a transformers folder or hub id")
    pretrained_backbone: str | None = Field(None, description="Swin weights to start the backbone from: a state-dict "
                                                              "file (Detectron2 or transformers names) or a "
                                                              "transformers Swin folder or hub id")
    precision: str = Field("32", description="Lightning precision: 32, 16-mixed, bf16-mixed")
    optim: OptimConfig = section(OptimConfig)
    clip_grad_type: Literal["full", "norm", "value"] = Field(
        "full", description="full and norm: clip the L2 norm of all gradients together to clip_grad_norm; value: "
                            "clip each gradient element to +-clip_grad_norm")
    clip_grad_norm: float = Field(0.01, ge=0, description="0 disables clipping")
    freeze: list[str] = Field(default_factory=list, description="Modules to freeze: TAO's names (backbone, "
                                                                "pixel_decoder, transformer_decoder, sem_seg_head, "
                                                                "task_mlp, text_encoder, text_projector, prompt_ctx) "
                                                                "or parameter-name patterns (fnmatch)")
    activation_checkpoint: bool = Field(False, description="Gradient checkpointing of the backbone: its "
                                                          "activations are recomputed in backward, not kept "
                                                          "(benchmarks/activation_checkpoint.py)")
    distributed_strategy: Literal["ddp", "ddp_sharded", "fsdp"] = Field(
        "ddp", description="ddp_sharded (fairscale's sharded DDP) left Lightning 2, and fsdp (TAO Mask2Former's) "
                           "is not offered: both run as ddp, with a note; save memory with precision 16-mixed, "
                           "activation_checkpoint or freeze")
    sync_batchnorm: bool | None = Field(None, description="TAO SegFormer's key: synchronize BatchNorm statistics "
                                                          "across DDP processes; empty: on whenever training runs "
                                                          "in more than one process")
    use_distributed_sampler: bool = Field(True, description="TAO SegFormer's key: each DDP process trains on its "
                                                            "own share of the images each epoch; false: every "
                                                            "process on all of them")
    tensorboard: TensorBoardConfig = section(TensorBoardConfig)
    verbose: bool = Field(False, description="Log the optimizer's parameter groups: their learning rate (lr, or "
                                             "lr * backbone_multiplier), weight decay and tensor counts")

    @field_validator("precision", mode="before")
    @classmethod
    def _lightning_precision(cls, v: Any) -> str:
        aliases = {"fp32": "32", "32": "32", "fp16": "16-mixed", "16": "16-mixed", "bf16": "bf16-mixed"}
        key = str(v).strip().lower()
        if key in ("32", "16-mixed", "bf16-mixed", "32-true", "16-true", "bf16-true", "64", "64-true"):
            return key
        if key in aliases:
            log.warning("train.precision %r normalized to Lightning's %r", v, aliases[key])
            return aliases[key]
        raise ValueError(f"unknown precision {v!r}; use 32, 16-mixed (fp16) or bf16-mixed")


# ----------------------------------------------------------------------------- other actions
RuntimeBackend = Literal["auto", "torch", "onnxruntime", "openvino", "tensorrt"]
RuntimePrecision = Literal["auto", "fp32", "bf16", "int8"]
BACKEND_HELP = ("What runs the model: auto (a checkpoint on torch, an engine on tensorrt, an ONNX file on the "
                "fastest of onnxruntime and openvino whose parity against ONNX Runtime passed on this machine, "
                "measured once into <file>.backends.json), torch (checkpoints), onnxruntime or openvino (ONNX files; "
                "openvino needs the package: pip install 'oneformer-pipeline[openvino]'), tensorrt (trt_engine)")
PRECISION_HELP = ("Runtime precision (not train.precision): auto (the file's own, fp32 or int8 for a quantized "
                  "file; with backend auto also OpenVINO bf16 where this CPU has it and it is faster and passes "
                  "parity), fp32, bf16 (OpenVINO on a CPU with AVX512-BF16 or AMX) or int8 (the INT8 file's own: "
                  "checks the file is one)")
PRECISION_ALIASES = {"fp32": "fp32", "float32": "fp32", "32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
                     "int8": "int8", "auto": "auto"}


def runtime_precision(section: str) -> Callable[[Any], Any]:
    """A validator reading FP32, float32, 32, BF16, bfloat16 ... as the runtime's names (with a warning naming
    <section>.precision); anything else is left to the Literal's error, which lists the allowed values."""

    def normalize(v: Any) -> Any:
        key = str(v).strip().lower()
        if key in PRECISION_ALIASES and PRECISION_ALIASES[key] != v:
            log.warning("%s.precision %r normalized to %r", section, v, PRECISION_ALIASES[key])
            return PRECISION_ALIASES[key]
        return v

    return normalize


class EvaluateConfig(Section):
    """Evaluation of a checkpoint, ONNX file, engine, or prediction files."""

    checkpoint: str = Field("best", description="A .pth, 'best' or 'latest' (from the train folder)")
    trt_engine: str | None = Field(None, description="TensorRT engine to evaluate instead of checkpoint")
    predictions: str | None = Field(None, description="Folder of prediction files to score instead (semantic/*.png, "
                                    "panoptic.json + PNGs, COCO results JSON; see the README's metric contract)")
    semantic_ids: Literal["auto", "raw", "contiguous"] = Field(
        "auto", description="What the values of semantic prediction PNGs are: raw category ids (0 and "
                            "dataset.ignore_value unlabeled; what `oneformer inference` writes) or contiguous class "
                            "indices 0..N-1 (dataset.ignore_value unlabeled). auto: whichever alone fits every file; "
                            "a file both fit differently is an error asking to set this")
    missing_predictions: Literal["error", "empty"] = Field(
        "error", description="An image of the evaluation split with no prediction: an error naming it, or scored "
                             "as an empty prediction by every metric")
    num_gpus: int = Field(1, ge=0, description="0: the CPU; otherwise the checkpoint or engine runs on one GPU, the "
                                               "first of gpu_ids (a larger batch_size uses it better)")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU ids; evaluation runs on the first")
    backend: RuntimeBackend = Field("auto", description=BACKEND_HELP)
    precision: RuntimePrecision = Field("auto", description=PRECISION_HELP)
    results_dir: str | None = Field(None, description="Where metrics.json and per_class_iou.csv go; default "
                                                      "<results_dir>/evaluate")
    batch_size: int | None = Field(None, ge=1, description="Images per forward pass, zero-padded to the largest "
                                                           "of the batch; empty: the scored split's batch_size")
    iou_per_class: bool = Field(True, description="Also log the per-class IoU table (per_class_iou.csv is "
                                                  "written either way)")
    max_images: int | None = Field(None, gt=0, description="Evaluate only the first N images")

    _precision = field_validator("precision", mode="before")(runtime_precision("evaluate"))


class InferenceConfig(Section):
    """Prediction over a folder of images."""

    checkpoint: str = Field("best", description="A .pth, 'best' or 'latest' (from the train folder)")
    trt_engine: str | None = Field(None, description="TensorRT engine to run instead of checkpoint")
    mode: Task = Field("semantic", description="Task predicted: semantic (label PNGs), panoptic (COCO panoptic "
                                               "JSON and PNGs) or instance (COCO results JSON), with overlays")
    images_dir: str | None = Field(None, description="Folder, .tar.gz archive or URL of images")
    image_size: list[int] = Field(default_factory=lambda: [1024, 1024], description="Network input [H, W] (or "
                                  "[S]); default [dataset.image_size] * 2; a fixed-size ONNX file or engine takes "
                                  "its own")
    keep_aspect_ratio: bool = Field(False, description="Resize each image to fit inside image_size with its own "
                                                       "aspect ratio instead of stretching it to image_size")
    results_dir: str | None = Field(None, description="Where predictions and overlays go; default "
                                                      "<results_dir>/inference")
    num_gpus: int = Field(1, ge=0, description="0: the CPU; otherwise one GPU, the first of gpu_ids")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPU ids; inference runs on the first")
    backend: RuntimeBackend = Field("auto", description=BACKEND_HELP)
    precision: RuntimePrecision = Field("auto", description=PRECISION_HELP)
    batch_size: int = Field(1, ge=1, description="Images per forward pass (zero-padded to the largest with "
                                                 "keep_aspect_ratio)")
    opacity: float = Field(0.5, ge=0, le=1, description="Overlay blend of the colored label map")
    draw_labels: bool = Field(True, description="Overlays name each segment's class and box each instance")

    _precision = field_validator("precision", mode="before")(runtime_precision("inference"))


class ExportConfig(Section):
    """ONNX export."""

    checkpoint: str = Field("best", description="A .pth, 'best' or 'latest' (from the train folder)")
    onnx_file: str | None = Field(None, description="Output path; default <results_dir>/export/model.onnx")
    on_cpu: bool = Field(True, description="The export always traces on the CPU (the graph is the same on any "
                                           "device); false is noted")
    opset_version: int = Field(17, ge=7, description="ONNX opset; below 16 (TAO documents 12) the export uses 16, "
                                                     "the lowest that holds GridSample, with a note")
    input_channel: Literal[3] = Field(3, description="RGB only, as in TAO")
    input_width: int = Field(640, gt=0, description="Width of the ONNX input in pixels, fixed in the graph (default "
                                                    "Mask2Former 960, SegFormer dataset.segment.img_size); a "
                                                    "multiple of the network's size_divisibility "
                                                    "(model.one_former's, model.mask_former's; 32 for SegFormer)")
    input_height: int = Field(640, gt=0, description="Height of the ONNX input in pixels, fixed in the graph "
                                                     "(default Mask2Former 544, SegFormer dataset.segment.img_size); a "
                                                     "multiple of the network's size_divisibility "
                                                     "(model.one_former's, model.mask_former's; 32 for SegFormer)")
    batch_size: int = Field(-1, ge=-1, description="Batch of the ONNX input; -1: a dynamic batch axis")
    task: Task = Field("semantic", description="Task the graph answers (its task text is built in): semantic "
                                               "outputs what semantic_output says; instance and panoptic output "
                                               "class and mask logits")
    semantic_output: Literal["scores", "labels"] = Field(
        "scores", description="semantic task: per-class scores [B,C,H/4,W/4] or the label map [B,H,W]")
    overwrite: bool = Field(False, description="Replace an existing onnx_file instead of failing")
    results_dir: str | None = Field(None, description="Export folder (status, and model.onnx where onnx_file is "
                                                      "empty); default <results_dir>/export")
    min_agreement: float = Field(0.99, ge=0, le=1, description="Fail if ONNX/PyTorch label agreement is lower")
    parity_images: int = Field(8, gt=0, description="Validation images the parity check compares on")


class QuantizeConfig(Section):
    """INT8 post-training quantization."""

    model_path: str = Field("best", description="An ONNX file or a checkpoint")
    onnx_file: str | None = Field(None, description="INT8 QDQ ONNX file to write; default "
                                                    "<quantize folder>/model.int8.onnx")
    results_dir: str | None = Field(None, description="Quantize folder (status, the exported FP32 model of a "
                                                      "checkpoint); default <results_dir>/quantize")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How ONNX Runtime sets activation ranges from the calibration images: min/max, "
                              "entropy or percentile")
    num_calibration_images: int = Field(16, gt=0, description="Calibration images used: the first N of "
                                                              "dataset.quant_calibration_dataset.images_dir")
    per_channel: bool = Field(True, description="One weight scale per output channel instead of per tensor "
                                                "(MatMuls whose weight is not 2-D stay FP32 then)")
    reduce_range: bool = Field(True, description="7-bit weights. x86 CPUs without VNNI (AVX2-only) saturate U8xS8 "
                                                 "products of 8-bit weights and the INT8 model goes wrong there "
                                                 "(93% vs 99% agreement measured); off only for VNNI-only targets")
    max_miou_drop: float = Field(0.01, ge=0, le=1, description="The INT8 gate: validation mIoU may drop at most "
                                                               "this much below the FP32 model's")
    min_agreement: float | None = Field(None, ge=0, le=1, description="Optional second gate: INT8-vs-FP32 pixel "
                                                                      "agreement (always reported)")
    overwrite: bool = Field(False, description="Replace an existing onnx_file instead of failing")
    backend: str | None = Field(None, description="TAO's quantization backend (modelopt.onnx, torchao): noted; "
                                                  "ONNX Runtime's static QDQ quantization runs")
    mode: Literal["static_ptq"] | None = Field(None, description="TAO's quantization mode: static post-training "
                                                                 "quantization, the one that runs here")


class TrtCalibrationConfig(Section):
    """TAO's TensorRT INT8 calibrator keys (accepted; the QDQ model carries its own scales)."""

    cal_image_dir: list[str] | str | None = Field(None, description="TAO's calibration image folders; accepted, "
                                                                    "unused")
    cal_cache_file: str | None = Field(None, description="TAO's INT8 calibration cache file; accepted, unused")
    cal_batch_size: int = Field(1, gt=0, description="TAO's images per calibration batch; accepted, unused")
    cal_batches: int = Field(1, gt=0, description="TAO's number of calibration batches; accepted, unused")


class TensorRTConfig(Section):
    """TensorRT builder settings."""

    data_type: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="Engine precision: fp32, fp16 (FP16 kernels allowed) or int8 (needs the QDQ model of "
                            "`oneformer quantize`)")
    workspace_size: int = Field(4096, gt=0, description="MiB")
    min_batch_size: int = Field(1, gt=0, description="Smallest batch of the engine's optimization profile "
                                                     "(dynamic-batch ONNX only)")
    opt_batch_size: int = Field(1, gt=0, description="Batch TensorRT tunes the engine's kernels for")
    max_batch_size: int = Field(1, gt=0, description="Largest batch the engine accepts")
    timing_cache: str | None = Field(None, description="TensorRT timing cache file: read if it exists, written "
                                                       "after the build (faster rebuilds)")
    calibration: TrtCalibrationConfig = Field(
        default_factory=TrtCalibrationConfig,
        description="TAO's INT8 calibrator settings; accepted, unused: INT8 engines are built from the QDQ model "
                    "of `oneformer quantize`, whose scales are in the graph (calibrate with "
                    "dataset.quant_calibration_dataset there)")


class GenTrtEngineConfig(Section):
    """TensorRT engine generation."""

    onnx_file: str | None = Field(None, description="ONNX file to build from; default the export's model.onnx "
                                                    "(data_type int8: the quantize action's model.int8.onnx)")
    trt_engine: str | None = Field(None, description="Engine file to write; default "
                                                     "<gen_trt_engine folder>/<ONNX name>.<data_type>.engine")
    results_dir: str | None = Field(None, description="Engine folder; default <results_dir>/gen_trt_engine")
    gpu_id: int = Field(0, ge=0, description="The CUDA device the engine is built on (and tuned for)")
    overwrite: bool = Field(False, description="Replace an existing trt_engine instead of failing")
    batch_size: int = Field(-1, ge=-1, description="TAO's engine batch: > 0 fixes min/opt/max batch to it; -1 "
                                                   "takes tensorrt.*_batch_size")
    input_channel: Literal[3] = Field(3, description="RGB only, as in TAO")
    input_width: int | None = Field(None, gt=0, description="Must equal the ONNX file's input width (set at "
                                                            "export); empty: the ONNX file's")
    input_height: int | None = Field(None, gt=0, description="Must equal the ONNX file's input height (set at "
                                                             "export); empty: the ONNX file's")
    opset_version: int | None = Field(None, description="Accepted, unused: TensorRT parses the ONNX file's own "
                                                        "opset (export.opset_version sets it)")
    verbose: bool = Field(False, description="TensorRT's builder log at VERBOSE instead of WARNING")
    tensorrt: TensorRTConfig = section(TensorRTConfig)


# TAO's automl_algorithm names as an Optuna sampler + pruner; TAO's others have no Optuna equivalent here
TAO_ALGORITHMS = {"bayesian": ("tpe", "none"), "asha": ("random", "successive_halving"),
                  "hyperband": ("random", "hyperband"), "bohb": ("tpe", "hyperband")}
TAO_NOT_OFFERED = ("bfbo", "dehb", "hyperband_es", "pbt")


class AutoMLConfig(Section):
    """Hyper-parameter search with Optuna."""

    automl_algorithm: str | None = Field(
        None, description="TAO's algorithm name, as a sampler + pruner: bayesian = tpe + none, asha = random + "
                          "successive_halving, hyperband = random + hyperband, bohb = tpe + hyperband; read into "
                          "automl.sampler and automl.pruner (a warning names a replaced value), which the written "
                          "spec shows instead")
    n_trials: int = Field(4, gt=0, description="Trials a run trains in all (a resumed run counts those it "
                                               "already finished)")
    timeout: int | None = Field(None, gt=0, description="Seconds")
    trial_timeout: int | None = Field(6 * 3600, gt=0, description="Seconds one trial may train before it is "
                                                                  "stopped and recorded failed")
    sampler: Literal["tpe", "random", "gp", "cmaes"] = Field(
        "tpe", description="Optuna sampler proposing each trial's values: TPE, random, Gaussian process or CMA-ES; "
                           "seeded from train.seed")
    pruner: Literal["successive_halving", "hyperband", "median", "none"] = Field(
        "median", description="Early stopping on per-epoch validation mIoU; successive_halving met the pruning "
                              "goal in benchmarks/automl.py")
    n_jobs: int = Field(1, gt=0, description="Trials run in parallel; a new one starts as soon as one ends")
    trial_deployment: str | None = Field(
        None, pattern=r"^oneformer-trial/[^/]+$",
        description="Prefect deployment each trial runs as (oneformer-trial/<name>, see prefect.yaml), so n_jobs "
                    "trials spread over every worker of its pool; empty: trials run inside this flow run's process")
    storage: str | None = Field(None, description="SQLAlchemy URL; default SQLite in results_dir")
    study_name: str | None = Field(None, description="Optuna study to create or continue; default model_name")
    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="key -> {min, max, scale} narrowing or extending the schema"
    )

    @field_validator("automl_algorithm")
    @classmethod
    def _offered(cls, v: str | None) -> str | None:
        if v is not None and v.strip().lower() not in TAO_ALGORITHMS:
            why = "TAO's, with no Optuna equivalent here" if v.strip().lower() in TAO_NOT_OFFERED else "unknown"
            raise ValueError(f"{v!r} is {why}: choose one of {', '.join(TAO_ALGORITHMS)}, or set automl.sampler "
                             f"and automl.pruner yourself")
        return v

    @model_validator(mode="before")
    @classmethod
    def _tao_algorithm(cls, data: Any) -> Any:
        name = str(data.get("automl_algorithm") or "").strip().lower() if isinstance(data, dict) else ""
        if name not in TAO_ALGORITHMS:
            return data  # none, or one _offered refuses
        chosen = dict(zip(("sampler", "pruner"), TAO_ALGORITHMS[name], strict=True))
        for key, value in chosen.items():
            if data.get(key, value) != value:
                log.warning("automl.%s %r replaced by %r: automl.automl_algorithm=%s is sampler %s + pruner %s",
                            key, data[key], value, name, *TAO_ALGORITHMS[name])
        log.info("automl.automl_algorithm=%s: sampler %s + pruner %s", name, *TAO_ALGORITHMS[name])
        return {**data, "automl_algorithm": None, **chosen}  # read once: a later assignment is not re-mapped


class ExperimentSpec(Section):
    """The whole experiment spec, as TAO lays it out."""

    results_dir: str = Field("/results", description="Where every action writes, <results_dir>/<action>, unless "
                                                     "its own results_dir is set")
    encryption_key: str | None = Field(None, description="TAO's model encryption key: no file written here is "
                                                         "encrypted (as TAO 5 writes .pth and .onnx); masked in "
                                                         "every file, log and MLflow param")
    model_name: str = Field("oneformer", description="Registered model name; default: the architecture's name "
                                                     "(oneformer, mask2former, segformer)")
    dataset: DatasetConfig = section(DatasetConfig)
    model: ModelConfig = section(ModelConfig)
    train: TrainConfig = section(TrainConfig)
    evaluate: EvaluateConfig = section(EvaluateConfig)
    inference: InferenceConfig = section(InferenceConfig)
    export: ExportConfig = section(ExportConfig)
    quantize: QuantizeConfig = section(QuantizeConfig)
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig)
    automl: AutoMLConfig = section(AutoMLConfig)

    @model_validator(mode="before")
    @classmethod
    def _image_size_defaults(cls, data: Any) -> Any:
        """TAO's dataset.image_size is the evaluation and inference size where theirs are not given; each
        architecture's own defaults fill what its spec leaves out."""
        if not isinstance(data, dict):
            return data
        data = arch_defaults(data)
        size = _get(data, "dataset.image_size")
        if size is None:
            return data
        if _get(data, "dataset.augmentation.test_min_size") is None:
            _set(data, "dataset.augmentation.test_min_size", size)
        if _get(data, "inference.image_size") is None:
            _set(data, "inference.image_size", [size, size])
        return data

    @property
    def arch(self) -> str:
        """oneformer, mask2former or segformer (model.arch)."""
        return self.model.arch

    @property
    def num_classes(self) -> int:
        """Classes the network predicts: model.sem_seg_head.num_classes, SegFormer's dataset.segment.num_classes."""
        return self.dataset.segment.num_classes if self.arch == "segformer" else self.model.sem_seg_head.num_classes

    @property
    def num_classes_key(self) -> str:
        """The spec key of num_classes, for errors."""
        return "dataset.segment.num_classes" if self.arch == "segformer" else "model.sem_seg_head.num_classes"

    @property
    def binary_masks(self) -> bool:
        """SegFormer's label_transform norm: masks stored as 0/255 are classes 0/1."""
        return self.arch == "segformer" and self.dataset.segment.label_transform == "norm"

    @property
    def size_divisibility(self) -> int:
        """Training's padding multiple of the network's input: the query-based head's size_divisibility (0 or 1: no
        padding), 32 for SegFormer."""
        return 32 if self.arch == "segformer" else self.model.head.size_divisibility

    def value_at(self, dotted: str) -> Any:
        """The value of a dotted key such as `dataset.val.images`."""
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def action_dir(self, action: str) -> Path:
        """Where an action writes: its own results_dir if set, else <results_dir>/<action>."""
        section = getattr(self, action, None)
        own = getattr(section, "results_dir", None)
        return Path(own) if own else Path(self.results_dir) / action


# ----------------------------------------------------------------------------- TAO compatibility
# Keys TAO accepts that have no effect here: dropped with a note instead of failing.
IGNORED_KEYS = {
    "model.export": "export settings live in the export section",
    "dataset.cutmix_prob": "cutmix is not implemented",
    "dataset.workers": "use dataset.<split>.num_workers",
    "dataset.dataset_type": "annotations are always shared across workers",
    "dataset.name": "informational only",
    "export.gpu_id": "export runs on CPU",
    "evaluate.trt_batch_size": "batch size comes from evaluate.batch_size",
}
# Keys kept, whose TAO value has no effect here: (when it has none, why) -> a note when the spec gives such a value.
VALUE_NOTES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "encryption_key": (lambda v: v is not None, "no file written here is encrypted (TAO 5 writes .pth and .onnx "
                                                "unencrypted too); the key is masked wherever the spec is written"),
    "train.tensorboard.enabled": (lambda v: v is True, "metrics, charts and pictures are logged to MLflow"),
    "quantize.backend": (lambda v: v is not None, "INT8 here is ONNX Runtime's static QDQ quantization of the "
                         "exported model (what TAO's modelopt.onnx static_ptq also produces)"),
    "train.distributed_strategy": (lambda v: v in ("ddp_sharded", "fsdp"), "fairscale's sharded DDP left "
                                   "Lightning 2 and FSDP is not offered here; "
                                   "training runs as ddp (save memory with train.precision=16-mixed, "
                                   "train.activation_checkpoint or train.freeze)"),
    "train.optim.monitor_name": (lambda v: v not in (None, "mIoU"), "'best' is always the checkpoint with the "
                                 "highest validation mIoU (what the pipeline selects by)"),
    "export.on_cpu": (lambda v: v is False, "the export always traces on the CPU; the ONNX graph is the same"),
    "export.opset_version": (lambda v: isinstance(v, int) and v < 16, "the export uses opset 16, the lowest that "
                             "holds GridSample (the deformable attention)"),
    "gen_trt_engine.opset_version": (lambda v: v is not None, "TensorRT parses the ONNX file's own opset "
                                     "(export.opset_version sets it)"),
    "gen_trt_engine.tensorrt.calibration": (lambda v: _given(v, TrtCalibrationConfig), "INT8 engines are built "
                                            "from the QDQ model of `oneformer quantize`, its scales in the graph"),
    "evaluate.num_gpus": (lambda v: isinstance(v, int) and v > 1, "evaluation runs on one device, the first of "
                          "evaluate.gpu_ids; raise evaluate.batch_size instead"),
    "inference.num_gpus": (lambda v: isinstance(v, int) and v > 1, "inference runs on one device, the first of "
                           "inference.gpu_ids; raise inference.batch_size instead"),
}
# Keys TAO places elsewhere: moved with a note.
MOVED_KEYS = {
    "model.object_mask_threshold": "model.test.object_mask_threshold",
    "model.overlap_threshold": "model.test.overlap_threshold",
    "model.test_topk_per_image": "model.test.test_topk_per_image",
    "model.one_former.mask_dim": "model.sem_seg_head.mask_dim",
    "model.backbone.pretrained_weights": "train.pretrained_backbone",  # TAO's backbone weights (.pth or hub id)
    "model.backbone.pretrained_backbone_path": "train.pretrained_backbone",  # SegFormer's name for them
    "train.pretrained_model_path": "train.pretrained_model",
}


def _given(value: Any, section: type[BaseModel]) -> bool:
    """Whether a section's raw value sets anything other than its defaults (a written spec repeats them all)."""
    defaults = section().model_dump()
    return isinstance(value, dict) and any(defaults.get(k, object()) != v for k, v in value.items())


def _pop(d: dict, dotted: str) -> tuple[bool, Any]:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.get(p) if isinstance(d, dict) else None
        if not isinstance(d, dict):
            return False, None
    if isinstance(d, dict) and parts[-1] in d:
        return True, d.pop(parts[-1])
    return False, None


def _set(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def _get(d: dict, dotted: str) -> Any:
    for p in dotted.split("."):
        d = d.get(p) if isinstance(d, dict) else None
    return d


# TAO Mask2Former's split keys, read as ours
SPLIT_NAMES = {"img_dir": "images", "panoptic_dir": "panoptic", "type": "format"}
MASK2FORMER_SPLIT_KEYS = {"img_dir", "panoptic_dir", "panoptic_json", "instance_json", "target_size"}


def _split_names(raw: dict) -> list[str]:
    """TAO Mask2Former's dataset.<split> names moved to ours: img_dir, panoptic_dir, type, and panoptic_json or
    instance_json as annotations (the one model.mode trains on; both given: the other is noted and unused)."""
    notes = []
    instance_mode = _get(raw, "model.mode") == "instance"
    for split in ("train", "val", "test"):
        cfg = _get(raw, f"dataset.{split}")
        if not isinstance(cfg, dict):
            continue
        moved = []
        for theirs, ours in SPLIT_NAMES.items():
            if theirs in cfg and cfg.get(ours) is None:
                cfg[ours] = cfg.pop(theirs)
                moved.append(f"{theirs} as {ours}")
        pan, inst = cfg.pop("panoptic_json", None), cfg.pop("instance_json", None)
        chosen, name = (inst, "instance_json") if (instance_mode and inst) or not pan else (pan, "panoptic_json")
        if chosen is not None and cfg.get("annotations") is None:
            cfg["annotations"] = chosen
            moved.append(f"{name} as annotations")
            kind = "coco" if name == "instance_json" else "coco_panoptic"
            if cfg.get("format") not in (None, "auto", kind):
                notes.append(f"dataset.{split}.type {cfg['format']!r} is read as {kind}: the {name} file is "
                             "what this model trains and scores on")
            cfg["format"] = kind
        if moved:
            notes.append(f"dataset.{split}: TAO's {', '.join(moved)}")
        if pan is not None and inst is not None:
            unused = "panoptic_json" if name == "instance_json" else "instance_json"
            notes.append(f"dataset.{split}.{unused} is not read: the {'instance' if instance_mode else 'panoptic'} "
                         f"annotations ({name}) hold every target and metric of this model")
    return notes


def _tao_compat(raw: dict, source: str | None = None) -> list[str]:
    notes, clashes = _split_names(raw), []
    for old, new in MOVED_KEYS.items():
        found, value = _pop(raw, old)
        if found:
            if value is not None and _get(raw, new) not in (None, value):
                clashes.append(f"{old}={value!r} is TAO's name for {new}, which is {_get(raw, new)!r}: keep one")
                continue
            if value is not None:
                _set(raw, new, value)
            notes.append(f"{old} is read as {new}")
    if clashes:
        raise SpecError(clashes, source)
    for key, why in IGNORED_KEYS.items():
        found, _ = _pop(raw, key)
        if found:
            notes.append(f"{key} is accepted for TAO compatibility and ignored: {why}")
    for key, (no_effect, why) in VALUE_NOTES.items():
        value = _get(raw, key)
        if value is not None and no_effect(value):
            shown = "***" if key == "encryption_key" else repr(value)
            notes.append(f"{key}={shown} has no effect here: {why}")
    for note in notes:
        log.info("spec: %s", note)
    return notes


# ----------------------------------------------------------------------------- architectures
def arch_defaults(data: dict) -> dict:
    """A copy of a raw spec with its architecture's defaults where it gives none: the registered name, Mask2Former's
    panoptic mode and 960x544 export, and SegFormer's dataset.segment spelled out as the splits, sizes, batch and
    normalization every action reads. Those SegFormer sets through dataset.segment (SEGFORMER_DERIVED) always follow
    it, so a changed dataset.segment.batch_size (an AutoML trial's, an override of a written spec) takes effect."""
    data = copy.deepcopy(data)
    arch = _get(data, "model.arch") or "oneformer"

    def default(key: str, value: Any) -> None:
        if _get(data, key) is None:
            _set(data, key, value)

    def derive(key: str, value: Any) -> None:
        assert key in SEGFORMER_DERIVED, key
        _set(data, key, value)

    default("model_name", arch)
    if arch == "mask2former":
        default("model.mode", "panoptic")
        default("export.input_width", 960)
        default("export.input_height", 544)
    if arch != "segformer":
        return data
    seg = _get(data, "dataset.segment")
    seg = seg if isinstance(seg, dict) else {}
    default("model.mode", "semantic")
    if root := seg.get("root_dir"):
        root = str(root).rstrip("/")
        for split, folder in (("train", "train"), ("val", "val"), ("test", "val")):  # TAO evaluates on val
            default(f"dataset.{split}.images", f"{root}/images/{folder}")
            default(f"dataset.{split}.annotations", f"{root}/masks/{folder}")
            default(f"dataset.{split}.format", "masks")
        default("inference.images_dir", f"{root}/images/test")
    cal = seg.get("quant_calibration_dataset")
    if (cal_dir := (cal.get("images_dir") if isinstance(cal, dict) else None)) or root:
        default("dataset.quant_calibration_dataset.images_dir", cal_dir or f"{str(root).rstrip('/')}/images/train")
    for split in ("train", "val", "test"):
        derive(f"dataset.{split}.batch_size", seg.get("batch_size", 4))
        derive(f"dataset.{split}.num_workers", seg.get("workers", 2))
    size = seg.get("img_size", 256)
    if isinstance(size, int) and size > 0:
        derive("dataset.image_size", size)
        derive("dataset.augmentation.train_crop_size", [size, size])
        derive("dataset.augmentation.train_min_size", [size])
        derive("dataset.augmentation.train_max_size", 4 * size)
        derive("dataset.augmentation.test_min_size", size)
        derive("dataset.augmentation.test_max_size", 4 * size)
        default("export.input_width", size)
        default("export.input_height", size)
    aug = seg.get("augmentation") if isinstance(seg.get("augmentation"), dict) else {}
    crop = aug.get("with_scale_random_crop")
    if isinstance(crop, dict) and crop.get("enable") is False:
        default("dataset.augmentation.min_scale", 1.0)
        default("dataset.augmentation.max_scale", 1.0)
    flip = aug.get("random_flip") if isinstance(aug.get("random_flip"), dict) else {}
    derive("dataset.augmentation.random_flip", bool(flip.get("enable", True))
           and float(flip.get("hflip_probability", 0.5)) > 0)
    for ours, theirs, imagenet in (("pixel_mean", "mean", PIXEL_MEAN), ("pixel_std", "std", PIXEL_STD)):
        values = aug.get(theirs)
        if isinstance(values, list) and all(isinstance(v, int | float) for v in values):
            derive(f"dataset.{ours}", [round(float(v) * 255, 4) for v in values])  # TAO's 0-1 scale -> ours
        elif values is None:
            derive(f"dataset.{ours}", list(imagenet))
    return data


def detect_arch(raw: dict, hint: str | None = None, source: str | None = None) -> str:
    """The network a raw spec describes: model.arch, else the command's (`mask2former`, `segformer`), else the
    spec's shape (dataset.segment: SegFormer; model.mask_former, swin.type or TAO Mask2Former's split keys:
    Mask2Former), else OneFormer."""
    given = _get(raw, "model.arch")
    if given is not None and given not in ARCHS:
        raise SpecError([f"model.arch: {given!r} is not one of {', '.join(ARCHS)}"], source)
    if given and hint and given != hint:
        raise SpecError([f"model.arch is {given!r} but this is the `{hint}` command: run `{given} <action>` (or "
                         f"`oneformer <action>`), or set model.arch: {hint}"], source)
    if given or hint:
        return given or hint
    if isinstance(_get(raw, "dataset.segment"), dict):
        return "segformer"
    splits = [_get(raw, f"dataset.{s}") for s in ("train", "val", "test")]
    mask2former = (isinstance(_get(raw, "model.mask_former"), dict) or _get(raw, "model.backbone.swin.type")
                   or any(isinstance(s, dict) and set(s) & MASK2FORMER_SPLIT_KEYS for s in splits))
    return "mask2former" if mask2former else "oneformer"


_DEFAULTS: dict = {}


def check_owned(raw: dict, arch: str, source: str | None = None) -> list[str]:
    """Refuse keys of another architecture (set to something other than their defaults); returns notes for keys
    that have no effect in this one."""
    if not _DEFAULTS:
        _DEFAULTS.update(ExperimentSpec().model_dump(mode="json"))
    errors, notes = [], []
    for key, owners in OWNED.items():
        value = _get(raw, key)
        if arch not in owners and value is not None and differs(value, _get(_DEFAULTS, key)):
            names = " and ".join(TITLES[o] for o in owners)
            errors.append(f"{key} is a {names} key, but this spec's network is {TITLES[arch]} (model.arch: {arch}):"
                          f" remove it, or set model.arch: {owners[0]}")
    if errors:
        raise SpecError(errors, source)
    if arch == "oneformer":
        found, mode = _pop(raw, "model.mode")
        if found and mode is not None:
            notes.append(f"model.mode={mode!r} has no effect here: OneFormer predicts all three tasks (choose one with "
                         "inference.mode and export.task)")
    return notes


# ----------------------------------------------------------------------------- loading
def _fields_at(path: tuple) -> list[str]:
    model: type[BaseModel] | None = ExperimentSpec
    for part in path:
        field = model.model_fields.get(str(part)) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model else []


def _describe(err: dict) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?" if close else ""
        where = ".".join(map(str, loc[:-1])) or "the top level"
        return f"{key}: unknown key{hint} (valid keys at {where}: {', '.join(valid)})"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {err['msg']}{shown}"


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` with the value parsed as YAML (so 1e-3, [1,2] and true work)."""
    if "=" not in text:
        raise SpecError([f"override {text!r} must look like key=value, e.g. train.num_epochs=10"])
    key, _, value = text.partition("=")
    key = key.strip().lstrip("+")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise SpecError([f"override {key}: value {value!r} is not valid YAML ({exc})"]) from exc
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(c in parsed for c in "eE.") else parsed
        except ValueError:
            pass
    return key, parsed


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any] | None) -> dict:
    """Return a copy of the raw spec dict with dotted overrides applied."""
    out = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        _set(out, key, value)
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a spec file into a dict, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise SpecError([f"spec file {p} does not exist"], str(p))
    try:
        raw = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError([f"not valid YAML: {exc}"], str(p)) from None
    if raw is None:  # an empty file would otherwise run every default, /results included
        raise SpecError(["the file is empty; write a spec (`oneformer default_specs` writes commented templates)"],
                        str(p))
    if not isinstance(raw, dict):
        raise SpecError(["the top level must be a mapping of sections"], str(p))
    return raw


def build_spec(raw: dict, source: str | None = None, arch: str | None = None) -> ExperimentSpec:
    """Validate a raw dict into an ExperimentSpec, reporting every problem with its full key path; `arch` is the
    network the command is for (`mask2former train`), where the spec does not say."""
    raw = copy.deepcopy(raw)
    _set(raw, "model.arch", detect_arch(raw, arch, source))
    _tao_compat(raw, source)
    for note in check_owned(raw, raw["model"]["arch"], source):
        log.info("spec: %s", note)
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError([_describe(e) for e in exc.errors()], source) from None


def load_spec(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None, arch: str | None = None
) -> ExperimentSpec:
    """Load a YAML spec (or the defaults), apply `key=value` overrides, and validate it (`arch`: see build_spec)."""
    raw = read_yaml(path) if path else {}
    return build_spec(apply_overrides(raw, overrides), str(path) if path else None, arch)


def with_values(spec: ExperimentSpec, values: dict[str, Any], source: str = "derived spec") -> ExperimentSpec:
    """A copy of a validated spec with dotted-key values set, validated again (the spec itself is left alone)."""
    return build_spec(apply_overrides(spec.model_dump(mode="json"), values), source)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for a nested dict (MLflow params, printing)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def public_dict(spec: ExperimentSpec) -> dict:
    """The spec as plain data for anything written (files, params, checkpoints, cards): encryption_key and URL
    passwords masked. The spec object itself keeps them, for the code that connects."""
    return redact(spec.model_dump(mode="json"))


def dump_spec(spec: ExperimentSpec) -> str:
    """The resolved spec as YAML, secrets masked (see public_dict): every spec file written goes through here."""
    return yaml.safe_dump(public_dict(spec), sort_keys=False)
