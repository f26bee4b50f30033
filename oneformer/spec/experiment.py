"""ExperimentSpec: the whole spec, one section per action, as TAO lays it out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from oneformer.sections import Section, section
from oneformer.spec.actions import EvaluateConfig, ExportConfig, GenTrtEngineConfig, InferenceConfig, QuantizeConfig
from oneformer.spec.archs import arch_defaults
from oneformer.spec.automl import AutoMLConfig
from oneformer.spec.dataset import DatasetConfig
from oneformer.spec.dotted import _get, _set
from oneformer.spec.model import ModelConfig
from oneformer.spec.train import TrainConfig


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

