"""Dotted-key access (`model.backbone.type`) to a raw spec dict, before it is validated: what the TAO key mapping,
the architecture defaults and loading read and write keys with."""

from __future__ import annotations

from typing import Any


def _pop(d: dict, dotted: str) -> tuple[bool, Any]:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.get(p) if isinstance(d, dict) else None
        if not isinstance(d, dict):
            return False, None
    if isinstance(d, dict) and parts[-1] in d:
        return True, d.pop(parts[-1])
    return False, None


def _set(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def _get(d: dict, dotted: str) -> Any:
    for p in dotted.split("."):
        d = d.get(p) if isinstance(d, dict) else None
    return d

