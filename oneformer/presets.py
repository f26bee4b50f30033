"""Named spec presets kept as YAML in the repository's specs/ folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from oneformer.errors import SpecError

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"
PRESETS = ("smoke", "swin_tiny", "tao_default", "mask2former_smoke", "segformer_smoke")
SMOKE = {"oneformer": "smoke", "mask2former": "mask2former_smoke", "segformer": "segformer_smoke"}  # per network


def preset_path(name: str) -> Path:
    """Path of a preset YAML; an unknown name lists the known ones."""
    path = SPECS_DIR / f"{name}.yaml"
    if name not in PRESETS or not path.is_file():
        raise SpecError([f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (looked in {SPECS_DIR})"])
    return path


def preset(name: str) -> dict:
    """A preset as a raw spec dict."""
    return yaml.safe_load(preset_path(name).read_text())
