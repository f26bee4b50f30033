"""The experiment spec: pydantic models with TAO's key names (OneFormer, Mask2Former, SegFormer), loading and
overrides.

One module a concern, each importing only those before it: dotted (raw-dict keys), dataset, model, train, actions,
automl (the sections), tao (TAO's keys read as ours), archs (which network, its defaults), experiment
(ExperimentSpec), ownership (another network's keys refused) and loading (YAML, overrides, validation, dumping).
Import from here: `from oneformer.spec import ExperimentSpec, load_spec`."""

from oneformer.spec.actions import (
    BACKEND_HELP,
    PRECISION_ALIASES,
    PRECISION_HELP,
    EvaluateConfig,
    ExportConfig,
    GenTrtEngineConfig,
    InferenceConfig,
    QuantizeConfig,
    RuntimeBackend,
    RuntimePrecision,
    TensorRTConfig,
    TrtCalibrationConfig,
    runtime_precision,
)
from oneformer.spec.archs import arch_defaults, detect_arch
from oneformer.spec.automl import TAO_ALGORITHMS, TAO_NOT_OFFERED, AutoMLConfig
from oneformer.spec.dataset import (
    PIXEL_MEAN,
    PIXEL_STD,
    AugmentationConfig,
    CalibrationConfig,
    DatasetConfig,
    SplitConfig,
    Task,
    TaskProbability,
)
from oneformer.spec.experiment import ExperimentSpec
from oneformer.spec.loading import (
    apply_overrides,
    build_spec,
    dump_spec,
    flatten,
    load_spec,
    parse_override,
    public_dict,
    read_yaml,
    with_values,
)
from oneformer.spec.model import (
    BackboneConfig,
    ModelConfig,
    OneFormerHead,
    SemSegHead,
    SwinConfig,
    TaskToggling,
    TestConfig,
    TextEncoder,
)
from oneformer.spec.ownership import check_owned
from oneformer.spec.tao import IGNORED_KEYS, MASK2FORMER_SPLIT_KEYS, MOVED_KEYS, SPLIT_NAMES, VALUE_NOTES
from oneformer.spec.train import OptimConfig, TensorBoardConfig, TrainConfig

__all__ = [
    # dataset
    "Task", "PIXEL_MEAN", "PIXEL_STD", "SplitConfig", "AugmentationConfig", "TaskProbability", "CalibrationConfig",
    "DatasetConfig",
    # model
    "SwinConfig", "BackboneConfig", "OneFormerHead", "SemSegHead", "TextEncoder", "TestConfig", "TaskToggling",
    "ModelConfig",
    # train
    "OptimConfig", "TensorBoardConfig", "TrainConfig",
    # actions
    "RuntimeBackend", "RuntimePrecision", "BACKEND_HELP", "PRECISION_HELP", "PRECISION_ALIASES", "runtime_precision",
    "EvaluateConfig", "InferenceConfig", "ExportConfig", "QuantizeConfig", "TrtCalibrationConfig", "TensorRTConfig",
    "GenTrtEngineConfig",
    # automl
    "TAO_ALGORITHMS", "TAO_NOT_OFFERED", "AutoMLConfig",
    # experiment
    "ExperimentSpec",
    # tao
    "IGNORED_KEYS", "VALUE_NOTES", "MOVED_KEYS", "SPLIT_NAMES", "MASK2FORMER_SPLIT_KEYS",
    # archs, ownership
    "arch_defaults", "detect_arch", "check_owned",
    # loading
    "parse_override", "apply_overrides", "read_yaml", "build_spec", "load_spec", "with_values", "flatten",
    "public_dict", "dump_spec",
]
