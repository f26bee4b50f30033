"""What each pipeline stage hands to the next: selected checkpoint, evaluation, conversions, registration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Trial:
    """One AutoML trial as the model card and the charts show it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, ...
    mIoU: float | None  # its best validation mIoU (the last reported one for pruned trials)
    epochs: int | None
    params: dict[str, Any]


def trial_label(params: dict[str, Any]) -> str:
    """A trial's values in short form, e.g. `lr=0.001, weight_decay=0.0001`."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in params.items())


@dataclass(frozen=True)
class Selection:
    """The checkpoint training chose by validation mIoU: a study's best trial, or the one training run."""

    checkpoint: str
    mIoU: float
    trial: int | None = None  # None when AutoML was off
    params: dict[str, Any] = field(default_factory=dict)
    study: str | None = None
    trials: tuple[Trial, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """Test metrics of the selected checkpoint, its per-class IoU rows, and the folder holding both."""

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]  # {class, name, iou}
    folder: str


def _maxdiff(report: dict) -> str:
    diff = report.get("max_abs_diff")
    if isinstance(diff, dict):
        return ", ".join(f"{k} {v:.1e}" for k, v in diff.items())
    return f"{diff:.1e}" if isinstance(diff, float) else ""


@dataclass(frozen=True)
class Conversion:
    """One conversion (PyTorch -> ONNX, ONNX -> INT8, ONNX -> TensorRT) with its report, or why it was skipped."""

    kind: str  # onnx, int8, engine_fp16, ...: what the file is
    name: str  # e.g. "ONNX FP32 -> INT8"
    file: str | None
    report: dict[str, Any]
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        """Whether it met its gate (a skipped conversion did not)."""
        return self.skipped is None and bool(self.report.get("passed", True))

    @property
    def verdict(self) -> str:
        """Why it passed or failed its gate, in words."""
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        return str(self.report.get("verdict", "pass" if self.passed else "FAIL"))

    def row(self) -> list[str]:
        """The parity-table row: conversion, label agreement, max abs diff, mIoU, status."""
        if self.skipped is not None:
            return [self.name, "", "", "", f"skipped: {self.skipped[:80]}"]
        miou = self.report.get("mIoU")
        miou_text = f"{miou['fp32']:.4f} -> {miou['int8']:.4f}" if isinstance(miou, dict) else ""
        return [self.name, f"{self.report['agreement']:.4%}", _maxdiff(self.report), miou_text,
                "pass" if self.passed else f"FAIL: {self.verdict}"]


@dataclass(frozen=True)
class ChampionScore:
    """The current champion scored on this run's test split, or why it could not be."""

    version: str
    mIoU: float | None
    metrics: dict[str, float]
    error: str | None = None


@dataclass(frozen=True)
class Registration:
    """The registered model version, where the aliases point afterwards, and why."""

    name: str
    version: str
    aliases: list[str]
    model_uri: str
    champion: str | None
    promoted: bool = False
    verdict: str = ""
    new: bool = True  # False: an earlier run registered this checkpoint already; nothing new was registered

    @property
    def headline(self) -> str:
        """`champion unchanged: vN` for a run that registered nothing new (the summary's and the note's first words)."""
        return f"champion unchanged: {f'v{self.champion}' if self.champion else 'none'}"


@dataclass(frozen=True)
class Lineage:
    """What a model version traces back to: the spec and the data, as digests and a source URI."""

    spec_digest: str
    data: dict[str, str]  # "all" plus one digest per source folder
    train_source: str
    training: str = ""  # digest of the spec keys a study trains on (model, train, dataset settings, search)
