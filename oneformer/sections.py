"""The base every spec section shares: unknown keys refused, fields described, AutoML bounds in the schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def tunable(default: Any, low: float, high: float, scale: str = "linear", **kw: Any) -> Any:
    """A field AutoML may search; its bounds and scale land in the JSON Schema under `automl`."""
    extra = {"automl": {"min": low, "max": high, "scale": scale, "default": default}}
    return Field(default, ge=low, le=high, json_schema_extra=extra, **kw)


class Section(BaseModel):
    """Every spec section rejects unknown keys and re-validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def section(cls: type[BaseModel]) -> Any:
    """A field holding a nested section, described by the first line of the section class's docstring."""
    doc = (cls.__doc__ or "").strip()
    if not doc:
        raise TypeError(f"section {cls.__name__} needs a docstring: its first line is the field's description")
    return Field(default_factory=cls, description=doc.splitlines()[0])
