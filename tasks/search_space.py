"""The AutoML search space: the spec schema's tunable fields, narrowed or extended by automl.search_space."""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel

from oneformer.errors import SpecError
from oneformer.spec import ExperimentSpec

DEFAULT_KEYS = ("train.optim.lr", "train.optim.backbone_multiplier", "train.optim.weight_decay")


def schema_bounds(model: type[BaseModel] = ExperimentSpec, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Dotted key -> {min, max, scale} for every field the spec marks tunable."""
    out: dict[str, dict[str, Any]] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "automl" in extra:
            out[key] = dict(extra["automl"])
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(schema_bounds(ann, key + "."))
    return out


def _field_type(spec: ExperimentSpec, key: str) -> type:
    obj: Any = spec
    for part in key.split("."):
        if not isinstance(obj, BaseModel) or part not in type(obj).model_fields:
            raise SpecError([f"automl.search_space: {key} is not a spec key"])
        obj = getattr(obj, part)
    return type(obj)


def search_space(spec: ExperimentSpec) -> dict[str, BaseDistribution]:
    """Optuna distributions: the default keys with schema bounds, merged with automl.search_space entries.

    An entry narrows a tunable key ({min, max, scale}), adds any other numeric key (min and max required),
    lists `choices`, or drops a key with {enabled: false}.
    """
    bounds = schema_bounds()
    wanted = {k: dict(bounds[k]) for k in DEFAULT_KEYS}
    problems = []
    for key, entry in spec.automl.search_space.items():
        if entry.get("enabled") is False:
            wanted.pop(key, None)
            continue
        base = dict(bounds.get(key, {}))
        unknown = set(entry) - {"min", "max", "scale", "choices", "enabled"}
        if unknown:
            problems.append(f"automl.search_space.{key}: unknown fields {sorted(unknown)} (use min, max, scale, "
                            f"choices, enabled)")
        base.update({k: v for k, v in entry.items() if k != "enabled"})
        if "choices" not in base and ("min" not in base or "max" not in base):
            problems.append(f"automl.search_space.{key}: give min and max (or choices); {key} has no schema bounds")
            continue
        if key in bounds and "choices" not in base and not bounds[key]["min"] <= base["min"] <= base["max"] <= \
                bounds[key]["max"]:
            problems.append(f"automl.search_space.{key}: [{base['min']}, {base['max']}] must lie within the "
                            f"schema's [{bounds[key]['min']}, {bounds[key]['max']}]")
        wanted[key] = base
    out: dict[str, BaseDistribution] = {}
    for key, b in wanted.items():
        try:
            kind = _field_type(spec, key)
        except SpecError as exc:
            problems += exc.problems
            continue
        if "choices" in b:
            out[key] = CategoricalDistribution(list(b["choices"]))
        elif kind is int:
            out[key] = IntDistribution(int(b["min"]), int(b["max"]), log=b.get("scale") == "log")
        else:
            out[key] = FloatDistribution(float(b["min"]), float(b["max"]), log=b.get("scale") == "log")
    if problems:
        raise SpecError(problems, "automl.search_space")
    return out
