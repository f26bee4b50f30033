"""Commented spec templates and JSON Schemas per action, generated from the spec models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from oneformer.spec import ACTIONS, ExperimentSpec

COMMON = ("results_dir", "encryption_key", "model_name", "dataset", "model")
SECTIONS = {action: (*COMMON, action) for action in ACTIONS}
SECTIONS["train"] = (*COMMON, "train", "automl")


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def _lines(model: BaseModel, indent: int) -> list[str]:
    out = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        note = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:{note}")
            out += _lines(value, indent + 1)
        else:
            out.append(f"{pad}{name}: {_scalar(value)}{note}")
    return out


def template(action: str, results_dir: str | None = None) -> str:
    """A commented YAML spec holding the sections an action reads, with defaults."""
    spec = ExperimentSpec()
    if results_dir:
        spec.results_dir = results_dir
    lines = [f"# oneformer {action} spec: defaults from the code; edit and run `oneformer {action} -e THIS.yaml`"]
    for name in SECTIONS[action]:
        field = ExperimentSpec.model_fields[name]
        value = getattr(spec, name)
        note = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            lines.append(f"{name}:{note}")
            lines += _lines(value, 1)
        else:
            lines.append(f"{name}: {_scalar(value)}{note}")
    return "\n".join(lines) + "\n"


def write_templates(out_dir: str | Path, actions: list[str], results_dir: str | None = None) -> list[Path]:
    """One <action>.yaml per action."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for action in actions:
        p = out / f"{action}.yaml"
        p.write_text(template(action, results_dir))
        paths.append(p)
    return paths


def schema(action: str) -> dict:
    """JSON Schema of the spec an action reads; tunable fields carry `automl` {min, max, scale, default}."""
    full = ExperimentSpec.model_json_schema()
    full["properties"] = {k: v for k, v in full["properties"].items() if k in SECTIONS[action]}
    full["title"] = f"oneformer {action} spec"
    return full


def automl_space() -> dict[str, dict]:
    """Dotted key -> {min, max, scale, default} for every field marked tunable."""
    defs = ExperimentSpec.model_json_schema()["$defs"]
    found: dict[str, dict] = {}

    def walk(props: dict, prefix: str) -> None:
        for key, prop in props.items():
            if "automl" in prop:
                found[prefix + key] = prop["automl"]
            ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("allOf", []) if "$ref" in a), None)
            if ref:
                walk(defs[ref.split("/")[-1]].get("properties", {}), f"{prefix}{key}.")

    walk(ExperimentSpec.model_json_schema()["properties"], "")
    return found


def write_schemas(out_dir: str | Path) -> list[Path]:
    """specs/schemas/<action>.schema.json for every action."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for action in ACTIONS:
        p = out / f"{action}.schema.json"
        p.write_text(json.dumps(schema(action), indent=1) + "\n")
        paths.append(p)
    return paths
