"""The spec sections only Mask2Former or SegFormer have (TAO's key names), and which keys belong to which network."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from oneformer.sections import Section, section

Arch = Literal["oneformer", "mask2former", "segformer"]
ARCHS: tuple[str, ...] = ("oneformer", "mask2former", "segformer")
TITLES = {"oneformer": "OneFormer", "mask2former": "Mask2Former", "segformer": "SegFormer"}

# Swin sizes TAO's model.backbone.swin.type names (the released Swin-T/S/B/L): embed_dim, depths, num_heads,
# window_size, pretrain_img_size
SWIN_TYPES: dict[str, tuple[int, list[int], list[int], int, int]] = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
}

# SegFormer's Mix Transformer encoders (the paper's MiT-B0..B5, as transformers' SegformerConfig takes them):
# hidden sizes, depths, and the MLP decoder's width
MIT_TYPES: dict[str, tuple[list[int], list[int], int]] = {
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
    "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768),
    "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}


class Mask2FormerHead(Section):
    """Transformer decoder and loss settings (TAO's model.mask_former)."""

    num_object_queries: int = Field(100, gt=0, description="Object queries of the transformer decoder: at most "
                                                           "this many segments per image")
    hidden_dim: int = Field(256, gt=0, description="Channels of the transformer decoder's queries")
    nheads: int = Field(8, gt=0, description="Attention heads of the transformer decoder and of the pixel "
                                             "decoder's deformable-attention encoder")
    dim_feedforward: int = Field(2048, gt=0, description="Hidden size of the transformer decoder's feed-forward "
                                                         "layers")
    dec_layers: int = Field(10, ge=2, description="Transformer decoder layers, counting the prediction from the "
                                                  "initial queries")
    dropout: float = Field(0.0, ge=0, le=1, description="Decoder dropout")
    pre_norm: bool = Field(False, description="Layer-normalize before attention and feed-forward in the "
                                              "transformer decoder (pre-norm) instead of after")
    enforce_input_proj: bool = Field(False, description="Always project the pixel decoder's features to hidden_dim "
                                                        "with a 1x1 conv")
    deep_supervision: bool = Field(True, description="Also apply the losses to every intermediate decoder layer's "
                                                     "prediction (auxiliary losses), not only the last")
    no_object_weight: float = Field(0.1, ge=0, description="Classification loss weight of the 'no object' class")
    class_weight: float = Field(2.0, ge=0, description="Weight of the classification loss and of its cost in "
                                                       "the query-target matching")
    mask_weight: float = Field(5.0, ge=0, description="Weight of the mask (binary cross-entropy) loss and of its "
                                                      "matching cost")
    dice_weight: float = Field(5.0, ge=0, description="Weight of the mask dice loss and of its matching cost")
    train_num_points: int = Field(12544, gt=0, description="Points sampled per mask for the mask and dice losses "
                                                           "and matching, instead of every pixel")
    oversample_ratio: float = Field(3.0, ge=1, description="Candidate points drawn per sampled point, among which "
                                                           "the most uncertain are picked (PointRend)")
    importance_sample_ratio: float = Field(0.75, ge=0, le=1, description="Share of the sampled points taken at "
                                                                         "the most uncertain candidates")
    size_divisibility: int = Field(32, ge=0, description="Images are zero-padded bottom/right to a multiple of "
                                                         "this many pixels (0 or 1: not padded in training); "
                                                         "export.input_width/height must be multiples")


class DecoderParams(Section):
    """The MLP decoder's width (TAO's model.decode_head.decoder_params)."""

    embed_dims: int | None = Field(None, gt=0, description="Channels every encoder stage is projected to and "
                                                           "fused at; empty: 256 for mit_b0/b1, 768 for b2-b5")


class DecodeHead(Section):
    """SegFormer's all-MLP decode head (TAO's model.decode_head)."""

    decoder_params: DecoderParams = section(DecoderParams)
    dropout_ratio: float = Field(0.1, ge=0, le=1, description="Dropout before the per-pixel classifier")
    align_corners: bool = Field(False, description="transformers' SegFormer upsamples with align_corners false; "
                                                   "true is refused")
    feature_strides: list[int] = Field(default_factory=lambda: [4, 8, 16, 32],
                                       description="Strides of the four encoder stages (MiT's, fixed)")
    in_index: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], description="Encoder stages the head "
                                                                                  "fuses: all four")
    in_channels: list[int] | None = Field(None, description="Channels of the fused stages; empty: those of "
                                                            "model.backbone.type (a different list is refused)")

    @model_validator(mode="after")
    def _fixed_layout(self) -> DecodeHead:
        if self.align_corners:
            raise ValueError("align_corners true: transformers' SegFormer upsamples with align_corners false")
        if self.feature_strides != [4, 8, 16, 32] or self.in_index != [0, 1, 2, 3]:
            raise ValueError("feature_strides must be [4, 8, 16, 32] and in_index [0, 1, 2, 3]: the head fuses "
                             "all four MiT stages at their own strides")
        return self


class PaletteEntry(Section):
    """One class of a SegFormer dataset: its name, mask value and colour (TAO's dataset.segment.palette)."""

    seg_class: str = Field(..., description="Class name")
    rgb: list[int] = Field(default_factory=lambda: [0, 0, 0], description="Overlay colour [R, G, B]")
    label_id: int = Field(..., ge=0, description="The value of this class's pixels in the mask PNGs")
    mapping_class: str | None = Field(None, description="Train this class as another palette class (by name); "
                                                        "empty: as itself")

    @field_validator("rgb")
    @classmethod
    def _rgb(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or any(not 0 <= c <= 255 for c in v):
            raise ValueError("must be [R, G, B], each 0-255")
        return v


class SegFlip(Section):
    """Random flips (TAO's dataset.segment.augmentation.random_flip)."""

    enable: bool = Field(True, description="Flip training images")
    hflip_probability: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip")
    vflip_probability: float = Field(0.0, ge=0, le=1, description="Probability of a vertical flip")


class SegAugmentation(Section):
    """SegFormer's training augmentation and normalization (TAO's dataset.segment.augmentation)."""

    random_flip: SegFlip = section(SegFlip)
    with_scale_random_crop: dict[str, Any] = Field(
        default_factory=lambda: {"enable": True}, description="enable: random rescale (0.5-2x) and crop to img_size; "
                                                              "off: resize to img_size only")
    random_rotate: dict[str, Any] | None = Field(None, description="Not applied here; noted when enabled")
    random_color: dict[str, Any] | None = Field(None, description="Not applied here; noted when enabled")
    with_random_blur: bool | dict[str, Any] | None = Field(None, description="Not applied here; noted when on")
    with_random_crop: bool | dict[str, Any] | None = Field(None, description="Crops come with "
                                                           "with_scale_random_crop; noted when on")
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406],
                              description="Per-channel RGB mean on the 0-1 scale (ImageNet's)")
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225],
                             description="Per-channel RGB standard deviation on the 0-1 scale")


class SegCalibration(Section):
    """Images used to calibrate INT8 quantization (TAO's dataset.segment.quant_calibration_dataset)."""

    images_dir: str | None = Field(None, description="Folder, .tar.gz archive or URL of calibration images; "
                                                     "empty: root_dir/images/train")


class SegmentConfig(Section):
    """SegFormer's dataset: one root with images/<split> and masks/<split> (TAO's dataset.segment)."""

    dataset: str = Field("SFDataset", description="TAO's dataset class name; informational")
    root_dir: str | None = Field(None, description="Folder, archive or URL holding images/train, images/val "
                                                   "(images/test for inference) and masks/train, masks/val: one "
                                                   "label-id PNG per image, named like it")
    num_classes: int = Field(2, gt=1, description="Classes the network predicts; every palette class must fit")
    img_size: int = Field(256, gt=0, description="Training crop and evaluation size (shortest side), the default "
                                                 "inference and export size")
    batch_size: int = Field(4, ge=1, description="Images per step in training and validation, and per forward "
                                                 "pass of evaluate")
    workers: int = Field(2, ge=0, description="Loader processes decoding images (0: in the main process)")
    label_transform: Literal["norm"] | None = Field(None, description="norm: binary masks stored as 0/255 are "
                                                                      "read as classes 0/1")
    palette: list[PaletteEntry] | None = Field(None, description="The classes: name, mask value, colour; empty: "
                                                                 "classes 0..num_classes-1 by mask value")
    augmentation: SegAugmentation = section(SegAugmentation)
    quant_calibration_dataset: SegCalibration = section(SegCalibration)

    @model_validator(mode="after")
    def _palette_fits(self) -> SegmentConfig:
        if self.palette:
            names = [p.seg_class for p in self.palette]
            unknown = sorted({p.mapping_class for p in self.palette if p.mapping_class} - set(names))
            if unknown:
                raise ValueError(f"palette mapping_class {unknown} names no seg_class of the palette ({names})")
            by_name = {p.seg_class: p for p in self.palette}
            chained = sorted(p.seg_class for p in self.palette if p.mapping_class and p.mapping_class != p.seg_class
                             and by_name[p.mapping_class].mapping_class not in (None, p.mapping_class))
            if chained:
                raise ValueError(f"palette classes {chained} map onto a class that is itself mapped; map them "
                                 "straight onto the class they train as")
            trained = {p.mapping_class or p.seg_class for p in self.palette}
            if len(trained) > self.num_classes:
                raise ValueError(f"the palette has {len(trained)} classes but num_classes is {self.num_classes}; "
                                 "raise num_classes")
        return self


# Sections and keys that belong to some architectures only: given with a value other than the default in a spec of
# another architecture, they are an error naming the key and the architecture (a written spec repeats defaults).
OWNED: dict[str, tuple[str, ...]] = {
    "model.one_former": ("oneformer",),
    "model.text_encoder": ("oneformer",),
    "model.task_toggling": ("oneformer",),
    "dataset.task_probability": ("oneformer",),
    "model.mask_former": ("mask2former",),
    "model.decode_head": ("segformer",),
    "dataset.segment": ("segformer",),
    "model.backbone.swin": ("oneformer", "mask2former"),
    "model.backbone.freeze_at": ("oneformer", "mask2former"),
    "model.sem_seg_head": ("oneformer", "mask2former"),
}


# What a SegFormer spec sets through dataset.segment (batch_size, workers, img_size, augmentation): derived from it
# every time a spec is read, and left out of SegFormer's templates
SEGFORMER_DERIVED = (*(f"dataset.{s}.{k}" for s in ("train", "val", "test") for k in ("batch_size", "num_workers")),
                     "dataset.image_size", "dataset.pixel_mean", "dataset.pixel_std",
                     *(f"dataset.augmentation.{k}" for k in ("train_crop_size", "train_min_size", "train_max_size",
                                                             "test_min_size", "test_max_size", "random_flip")))


def predicted_tasks(arch: str, mode: str | None) -> tuple[str, ...]:
    """The tasks a network predicts: OneFormer all three; Mask2Former its mode's (a panoptic model answers all three,
    an instance model instance and semantic, a semantic model semantic); SegFormer semantic."""
    if arch == "segformer" or (arch == "mask2former" and mode == "semantic"):
        return ("semantic",)
    if arch == "mask2former" and mode == "instance":
        return ("semantic", "instance")
    return ("semantic", "instance", "panoptic")


def divisibility(arch: str, model: dict) -> int:
    """The padding multiple of a network's input, from a model section as plain data (a checkpoint's spec)."""
    if arch == "segformer":
        return 32
    head = model.get("mask_former" if arch == "mask2former" else "one_former", {})
    return head.get("size_divisibility") or 32


def differs(value: Any, default: Any) -> bool:
    """Whether a raw spec value sets anything other than the default (nested dicts compared key by key)."""
    if isinstance(value, dict) and isinstance(default, dict):
        return any(differs(v, default.get(k, object())) for k, v in value.items())
    return value != default
