"""Specs built from one TAO key, and the spec notes that name it: what the TAO-key walkers check."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from oneformer.spec import build_spec


def one_key(dotted: str, value: Any) -> dict:
    """A raw spec holding only `dotted` = value."""
    raw: dict = {}
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


def notes_for(dotted: str, value: Any, caplog: pytest.LogCaptureFixture, built: bool = False
              ) -> tuple[Any, list[str]]:
    """The spec built from one key (`built`: `value` is the whole raw spec), and the spec notes that name it (or its
    section, for a section-wide note)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="oneformer.spec"):
        spec = build_spec(value if built else one_key(dotted, value), "tao.yaml")
    prefixes = [".".join(dotted.split(".")[:n]) for n in range(len(dotted.split(".")), 1, -1)]
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("spec: ")]
    return spec, [n for n in notes if any(n.startswith(f"spec: {p}") for p in prefixes) or n.startswith(
        f"spec: {dotted}")]
