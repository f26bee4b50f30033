"""Every spec key and flow parameter is described: the JSON schemas, the commented templates and the Prefect form
show these descriptions, so a key without one is a blank line in all three."""

from __future__ import annotations

import inspect
import re

import pytest
from pydantic import BaseModel

import flows.params
from oneformer.actions import ACTIONS
from oneformer.spec import ExperimentSpec
from oneformer.templates import schema, template


def undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of `model` (nested sections included) whose field has no description."""
    missing = []
    for name, field in model.model_fields.items():
        if not (field.description or "").strip():
            missing.append(f"{prefix}{name}")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            missing += undescribed(field.annotation, f"{prefix}{name}.")
    return missing


def params_models() -> list[type[BaseModel]]:
    """The BaseModel classes flows/params.py defines (not the ones it imports)."""
    return [c for _, c in inspect.getmembers(flows.params, inspect.isclass)
            if issubclass(c, BaseModel) and c.__module__ == flows.params.__name__]


def shown_description(prop: dict, defs: dict) -> str:
    """The description a form shows for a property: Prefect's form merges a property that is a `$ref` over the
    referenced definition (mergeSchemaPropertyDefinition: the property's own keys win), so such a property shows its
    own description, else the definition's. pydantic leaves a field's description out next to its `$ref` when it
    equals the definition's (a section described by its one-line class docstring); other schemas (anyOf, ...) are
    not merged, so those need their own."""
    own = str(prop.get("description") or "").strip()
    if own or "$ref" not in prop:
        return own
    return str(defs[prop["$ref"].rpartition("/")[2]].get("description") or "").strip()


def schema_undescribed(node: dict, defs: dict, prefix: str = "", seen: frozenset[str] = frozenset()) -> list[str]:
    """Dotted properties of a JSON schema object that a form would show without a description, following $ref into
    $defs (also inside anyOf/allOf/oneOf) so that every nested section's properties are checked too."""
    missing = []
    for name, prop in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        if not shown_description(prop, defs):
            missing.append(key)
        refs = [prop.get("$ref")] + [p.get("$ref") for k in ("anyOf", "allOf", "oneOf") for p in prop.get(k, [])]
        for ref in filter(None, refs):
            target = ref.rpartition("/")[2]
            if target not in seen:
                missing += schema_undescribed(defs[target], defs, f"{key}.", seen | {target})
    return missing


def test_every_spec_field_has_a_description() -> None:
    missing = undescribed(ExperimentSpec)
    assert not missing, f"{len(missing)} spec keys without a description: {', '.join(missing)}"


def test_every_flow_parameter_model_field_has_a_description() -> None:
    models = params_models()
    assert {"Stages", "Tracking", "ActionInputs"} <= {m.__name__ for m in models}
    missing = [f"{m.__name__}.{key}" for m in models for key in undescribed(m)]
    assert not missing, f"flows/params.py fields without a description: {', '.join(missing)}"


def test_section_fields_are_described_by_their_section_docstring() -> None:
    def sections(model: type[BaseModel], prefix: str = ""):  # noqa: ANN202 - a generator of (key, field, class)
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield f"{prefix}{name}", field, field.annotation
                yield from sections(field.annotation, f"{prefix}{name}.")

    # tensorrt.calibration keeps its own, longer description (why TAO's calibrator keys are unused)
    wrong = [key for key, field, cls in sections(ExperimentSpec) if key != "gen_trt_engine.tensorrt.calibration"
             and field.description != inspect.cleandoc(cls.__doc__ or "").splitlines()[0]]
    assert not wrong, f"section fields not described by their class docstring: {', '.join(wrong)}"


@pytest.mark.parametrize("action", ACTIONS)
def test_every_schema_property_has_a_description(action: str) -> None:
    full = schema(action)
    missing = schema_undescribed(full, full.get("$defs", {}))
    assert full["properties"], action
    assert not missing, f"{action} schema properties without a description: {', '.join(missing)}"


@pytest.mark.parametrize("action", ACTIONS)
def test_every_template_key_carries_a_comment(action: str) -> None:
    key_line = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):")
    missing, path = [], []
    for line in template(action).splitlines():
        found = key_line.match(line)
        if not found:
            continue
        depth = len(found.group(1)) // 2
        path[depth:] = [found.group(2)]
        if not re.search(r"\s# \S", line):
            missing.append(".".join(path))
    assert path, f"the {action} template has no keys"
    assert not missing, f"{action} template keys without a comment: {', '.join(missing)}"


def test_prefect_form_shows_the_parameter_models_descriptions() -> None:
    """What the Prefect UI renders: the flow's parameter schema, whose definitions hold flows/params.py's models."""
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    definitions = parameter_schema(pipeline.fn).model_dump()["definitions"]
    ours = {m.__name__ for m in params_models()} & set(definitions)
    assert {"Stages", "Tracking"} <= ours
    missing = [f"{name}.{prop}" for name in sorted(ours)
               for prop, value in definitions[name].get("properties", {}).items()
               if not shown_description(value, definitions)]
    assert not missing, f"Prefect form fields without a description: {', '.join(missing)}"
