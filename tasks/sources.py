"""Data sources as URIs and the files each action needs from them (TAO's per-action dataset requirements)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# (spec key, source, file under the source URI), in TAO's table order. export and gen_trt_engine need no
# dataset in TAO; ours compare the converted model with its source on real images, so they stage val images.
_TRAIN = [
    ("dataset.train.images", "train", "images.tar.gz"),
    ("dataset.train.annotations", "train", "annotations.json"),
    ("dataset.label_map", "train", "label_map.json"),
    ("dataset.train.panoptic", "train", "images_panoptic.tar.gz"),
    ("dataset.val.images", "eval", "images.tar.gz"),
    ("dataset.val.annotations", "eval", "annotations.json"),
    ("dataset.val.panoptic", "eval", "images_panoptic.tar.gz"),
    ("dataset.test.images", "eval", "images.tar.gz"),
]
REQUIREMENTS: dict[str, list[tuple[str, str, str]]] = {
    "train": _TRAIN,
    "evaluate": _TRAIN + [("dataset.test.annotations", "eval", "annotations.json"),
                          ("dataset.test.panoptic", "eval", "images_panoptic.tar.gz")],
    "inference": _TRAIN[:7] + [("dataset.test.images", "inference", "images.tar.gz"),
                               ("inference.images_dir", "inference", "images.tar.gz")],
    "quantize": _TRAIN + [("dataset.quant_calibration_dataset.images_dir", "calibration", "images.tar.gz")],
    "export": [("dataset.label_map", "train", "label_map.json"), ("dataset.val.images", "eval", "images.tar.gz")],
    "gen_trt_engine": [("dataset.label_map", "train", "label_map.json"),
                       ("dataset.val.images", "eval", "images.tar.gz")],
}


class DataSources(BaseModel):
    """Where each dataset lives: s3://bucket/prefix, file:// or a local folder in TAO's bucket layout."""

    model_config = ConfigDict(extra="forbid")

    train: str | None = Field(None, description="Folder with images.tar.gz, annotations.json, "
                                                "images_panoptic.tar.gz and label_map.json")
    eval: str | None = Field(None, description="Validation/test folder: images.tar.gz, annotations.json, "
                                               "images_panoptic.tar.gz")
    inference: str | None = Field(None, description="Folder with images.tar.gz to predict")
    calibration: str | None = Field(None, description="Folder with images.tar.gz for INT8 calibration")

    @field_validator("train", "eval", "inference", "calibration")
    @classmethod
    def _resolved(cls, v: str | None) -> str | None:
        if v is not None and "{{" in v:
            raise ValueError(f"{v!r} holds an unresolved prefect.yaml placeholder: set the environment variable "
                             f"it names before `prefect deploy`, or give the URI in the run's parameters")
        return v or None


def join(prefix: str, name: str) -> str:
    """prefix/name for URIs and paths alike."""
    return prefix.rstrip("/") + "/" + name


def required(action: str, sources: DataSources) -> dict[str, str]:
    """Spec key -> URI for every file `action` needs, from the sources that are set (the spec keeps the rest)."""
    return {key: join(getattr(sources, source), name) for key, source, name in REQUIREMENTS[action]
            if getattr(sources, source)}
