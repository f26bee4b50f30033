"""Loading a spec: reading YAML, key=value overrides, validation with errors naming every key (build_spec,
load_spec, with_values), and the spec as flat keys, plain data or YAML (flatten, public_dict, dump_spec)."""

from __future__ import annotations

import copy
import difflib
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from oneformer.errors import SpecError
from oneformer.secrets import redact
from oneformer.spec.archs import detect_arch
from oneformer.spec.dotted import _set
from oneformer.spec.experiment import ExperimentSpec
from oneformer.spec.ownership import check_owned
from oneformer.spec.tao import _tao_compat

log = logging.getLogger("oneformer.spec")  # one logger for the whole spec package, as before the split


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
