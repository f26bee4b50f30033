"""Commented spec templates and JSON Schemas per action, generated from the spec models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from oneformer.actions import ACTIONS, TABLE
from oneformer.arch_spec import ARCHS, OWNED, SEGFORMER_DERIVED
from oneformer.artifacts import write_text
from oneformer.spec import ExperimentSpec, public_dict

COMMON = ("results_dir", "encryption_key", "model_name", "dataset", "model")  # sections every action reads


def sections(action: str) -> tuple[str, ...]:
    """The spec sections an action reads, in template order."""
    return (*COMMON, *TABLE[action].sections)


def yaml_scalar(value: Any) -> str:
    """A value as one line of YAML, as the templates write it."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


# Where our default differs from TAO's documented one (../shared/reference), and why; the templates say so.
RECIPE = "ours is OneFormer's published recipe (SHI-Labs' configs)"
TAO_DEFAULTS: dict[str, tuple[Any, str]] = {
    "train.optim.lr": (2e-4, RECIPE),
    "train.optim.weight_decay": (1e-4, RECIPE),
    "train.clip_grad_norm": (0.1, RECIPE),
    "train.optim.milestones": ([11], f"{RECIPE}: lr drops at ~89% and ~96% of the epochs"),
    "train.activation_checkpoint": (True, "off here: it costs step time (1.06-1.20x) to save the backbone's "
                                          "activations only (-14% memory on Swin-T, benchmarks/"
                                          "activation_checkpoint.py); turn it on when memory is short"),
    "export.opset_version": (12, "12 cannot hold GridSample (16 is used then); 17 adds ONNX's LayerNormalization"),
}


def _note(field: Any, dotted: str) -> str:
    """The field's description, and TAO's default where ours differs."""
    parts = [field.description] if field.description else []
    if dotted in TAO_DEFAULTS:
        tao, why = TAO_DEFAULTS[dotted]
        parts.append(f"TAO's default is {yaml_scalar(tao)}; {why}")
    return f"  # {'. '.join(parts)}" if parts else ""


def foreign(dotted: str, arch: str) -> bool:
    """Whether a spec key belongs to other networks only, or (SegFormer) is set through dataset.segment: templates
    of `arch` leave it out (and schemas the former)."""
    return (dotted in OWNED and arch not in OWNED[dotted]) or (arch == "segformer" and dotted in SEGFORMER_DERIVED)


def _lines(model: BaseModel, indent: int, prefix: str = "", arch: str = "oneformer") -> list[str]:
    out = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        if foreign(f"{prefix}{name}", arch):
            continue
        value = getattr(model, name)
        note = _note(field, f"{prefix}{name}")
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:{note}")
            out += _lines(value, indent + 1, f"{prefix}{name}.", arch)
        else:
            out.append(f"{pad}{name}: {yaml_scalar(value)}{note}")
    return out


def template(action: str, results_dir: str | None = None, base: ExperimentSpec | None = None,
             source: str | None = None) -> str:
    """A commented YAML spec holding the sections an action reads: the defaults, or `base`'s values (secrets
    masked) when a spec is given."""
    spec = ExperimentSpec.model_validate(public_dict(base)) if base else ExperimentSpec()
    if results_dir:
        spec.results_dir = results_dir
    origin = f"values from {source}, defaults elsewhere" if source else "defaults from the code"
    lines = [f"# {spec.arch} {action} spec: {origin}; edit and run `{spec.arch} {action} -e THIS.yaml`"]
    for name in sections(action):
        field = ExperimentSpec.model_fields[name]
        value = getattr(spec, name)
        note = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            lines.append(f"{name}:{note}")
            lines += _lines(value, 1, f"{name}.", spec.arch)
        else:
            lines.append(f"{name}: {yaml_scalar(value)}{note}")
    return "\n".join(lines) + "\n"


def write_templates(out_dir: str | Path, actions: list[str], results_dir: str | None = None,
                    base: ExperimentSpec | None = None, source: str | None = None) -> list[Path]:
    """One <action>.yaml per action."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for action in actions:
        p = out / f"{action}.yaml"
        write_text(p, template(action, results_dir, base, source))
        paths.append(p)
    return paths


def schema(action: str, arch: str | None = None) -> dict:
    """JSON Schema of the spec an action reads; tunable fields carry `automl` {min, max, scale, default}. With
    `arch`, only that network's keys (model.arch fixed to it), as TAO packages a schema per model."""
    full = ExperimentSpec.model_json_schema()
    full["properties"] = {k: v for k, v in full["properties"].items() if k in sections(action)}
    full["title"] = f"{arch or 'oneformer'} {action} spec"
    if arch is None:
        return full
    for dotted in (k for k in OWNED if arch not in OWNED[k]):
        *path, last = dotted.split(".")
        node = full
        for part in path:
            node = node["properties"][part]
            node = full["$defs"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
        node["properties"].pop(last, None)
    full["$defs"]["ModelConfig"]["properties"]["arch"] |= {"default": arch, "enum": [arch]}
    return full


def write_schemas(out_dir: str | Path) -> list[Path]:
    """specs/schemas/<action>.schema.json (every network's keys) and <arch>/<action>.schema.json (one network's)
    for every action."""
    out = Path(out_dir)
    paths = []
    for folder, arch in ((out, None), *((out / a, a) for a in ARCHS)):
        folder.mkdir(parents=True, exist_ok=True)
        for action in ACTIONS:
            p = folder / f"{action}.schema.json"
            write_text(p, json.dumps(schema(action, arch), indent=1) + "\n")
            paths.append(p)
    return paths
