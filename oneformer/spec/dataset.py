"""The dataset section of the spec (splits, augmentation, task sampling, calibration images), and the task names
and ImageNet pixel statistics every section shares."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from oneformer.arch_spec import SegmentConfig
from oneformer.sections import Section, section, tunable

Task = Literal["semantic", "instance", "panoptic"]
# ImageNet statistics on the 0-255 scale: the spec's default and what a model file without its own falls back to.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


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

