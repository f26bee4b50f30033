"""Data sources as URIs and the files each action needs from them (TAO's per-action dataset requirements)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from oneformer.actions import TABLE, bucket_inputs


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


def required(action: str, sources: DataSources, given: dict[str, str] | None = None, layout: str = "oneformer"
             ) -> dict[str, str]:
    """Spec key -> URI for every file `action` needs: from the sources that are set (in the network's bucket
    layout), except where the run's overrides (`given`) name the file themselves; the spec keeps the rest."""
    given = given or {}
    from_sources = {i.key: join(getattr(sources, i.source), i.file) for i in bucket_inputs(action, layout)
                    if getattr(sources, i.source)}
    return {**from_sources, **{k: v for k, v in given.items() if k in from_sources}}


def data_overrides(overrides: dict[str, object], action: str) -> dict[str, str]:
    """The overrides that name one of `action`'s data files: they win over the bucket layout's file."""
    keys = {i.key for i in TABLE[action].inputs}
    return {k: str(v) for k, v in overrides.items() if k in keys and v not in (None, "")}
