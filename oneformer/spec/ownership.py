"""Which architecture owns a key: a spec setting another network's keys is refused (check_owned); its own
defaults are ExperimentSpec's, hence a module after experiment.py."""

from __future__ import annotations

from oneformer.arch_spec import OWNED, TITLES, differs
from oneformer.errors import SpecError
from oneformer.spec.dotted import _get, _pop
from oneformer.spec.experiment import ExperimentSpec

_DEFAULTS: dict = {}


def check_owned(raw: dict, arch: str, source: str | None = None) -> list[str]:
    """Refuse keys of another architecture (set to something other than their defaults); returns notes for keys
    that have no effect in this one."""
    if not _DEFAULTS:
        _DEFAULTS.update(ExperimentSpec().model_dump(mode="json"))
    errors, notes = [], []
    for key, owners in OWNED.items():
        value = _get(raw, key)
        if arch not in owners and value is not None and differs(value, _get(_DEFAULTS, key)):
            names = " and ".join(TITLES[o] for o in owners)
            errors.append(f"{key} is a {names} key, but this spec's network is {TITLES[arch]} (model.arch: {arch}):"
                          f" remove it, or set model.arch: {owners[0]}")
    if errors:
        raise SpecError(errors, source)
    if arch == "oneformer":
        found, mode = _pop(raw, "model.mode")
        if found and mode is not None:
            notes.append(f"model.mode={mode!r} has no effect here: OneFormer predicts all three tasks (choose one with "
                         "inference.mode and export.task)")
    return notes

