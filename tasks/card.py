"""The model card: what a registered version is, what it was trained on, how it scored, and whether it can ship."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tasks.results import ChampionScore, Conversion, Evaluation, Selection, trial_label

# Spec keys every card shows (the chosen trial's tuned values are added to them).
KEY_SETTINGS = ("train.optim.lr", "train.optim.backbone_multiplier", "train.optim.weight_decay", "train.num_epochs",
                "dataset.train.batch_size", "model.sem_seg_head.num_classes", "dataset.segment.num_classes",
                "model.arch", "model.mode", "dataset.image_size", "train.optim.lr_scheduler")
OWN_KEYS = {"model.sem_seg_head.num_classes": ("oneformer", "mask2former"),
            "dataset.segment.num_classes": ("segformer",), "model.mode": ("mask2former", "segformer")}


def key_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The card's key settings from a flattened spec: those of its network (SegFormer counts classes elsewhere)."""
    arch = flat.get("model.arch", "oneformer")
    return {k: flat[k] for k in KEY_SETTINGS if k in flat and arch in OWN_KEYS.get(k, (arch,))}


def network_line(spec: dict[str, Any]) -> str:
    """One line naming the network and its size."""
    model = spec["model"]
    arch, swin = model.get("arch", "oneformer"), model["backbone"]["swin"]
    if arch == "segformer":
        return f"SegFormer ({model['backbone'].get('type') or 'mit_b0'} encoder, MLP decoder, semantic only)"
    queries = model["mask_former" if arch == "mask2former" else "one_former"]["num_object_queries"]
    title = f"Mask2Former, mode {model.get('mode')}" if arch == "mask2former" else "OneFormer"
    return f"{title} (Swin embed {swin['embed_dim']}, depths {swin['depths']}, {queries} queries)"


@dataclass(frozen=True)
class ModelCard:
    """Everything the registry records about one version: its description, its tags, and its alias verdict."""

    name: str
    spec: dict[str, Any]
    selection: Selection
    evaluation: Evaluation | None
    conversions: tuple[Conversion, ...]
    params_m: float
    key_settings: dict[str, Any]
    data_digest: str
    train_source: str
    spec_digest: str
    flow_run_id: str
    run_id: str
    checkpoint_sha256: str
    run_key: str = ""
    champion: ChampionScore | None = None  # the current champion on this run's test split
    version: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """Test metrics (empty when the evaluate stage was off)."""
        return self.evaluation.metrics if self.evaluation else {}

    @property
    def mIoU(self) -> float:
        """Test mIoU, else the selection's validation mIoU."""
        return float(self.metrics.get("mIoU", self.selection.mIoU))

    @property
    def int8(self) -> Conversion | None:
        """The INT8 conversion, if the quantize stage ran."""
        return next((c for c in self.conversions if c.kind == "int8"), None)

    def promotion(self) -> tuple[bool, str]:
        """Whether this version may become champion, and why: its gates passed, and it scores at least the
        champion's mIoU on the same test images."""
        if self.int8 is None:
            return False, "no INT8 verdict (the quantize stage did not run)"
        if not self.int8.passed:
            return False, f"INT8 gate failed: {self.int8.verdict}"
        if self.champion is None:
            return True, "the first version whose gates passed"
        if self.champion.mIoU is None:
            return False, f"champion v{self.champion.version} {self.champion.error}"
        mine, theirs = round(self.mIoU, 6), round(self.champion.mIoU, 6)
        if "mIoU" not in self.metrics:
            return False, "no test mIoU of this version (the evaluate stage was off)"
        verb = ">=" if mine >= theirs else "<"
        images = f"{int(self.metrics['num_images'])} " if self.metrics.get("num_images") else ""
        return mine >= theirs, (f"test mIoU {mine:.4f} {verb} champion v{self.champion.version}'s {theirs:.4f} on "
                                f"the same {images}test images")

    def tags(self) -> dict[str, str]:
        """Model-version tags: the metric the champion rule reads, lineage digests, run ids, gates, comparison."""
        tags = {"mIoU": f"{self.mIoU:.6f}", "spec_digest": self.spec_digest, "data_digest": self.data_digest,
                "prefect_flow_run_id": self.flow_run_id, "mlflow_run_id": self.run_id, "run_key": self.run_key,
                "checkpoint_sha256": self.checkpoint_sha256, "automl_params": json.dumps(self.selection.params),
                **{f"metric.{k}": f"{v:.6f}" for k, v in self.metrics.items() if isinstance(v, float)}}
        if self.int8 is not None and self.int8.skipped is None:
            tags["int8_agreement"] = f"{self.int8.report['agreement']:.6f}"
            tags["int8_gate"] = "passed" if self.int8.passed else "failed"
            tags["int8_verdict"] = self.int8.verdict[:5000]
            if self.int8.report.get("miou_drop") is not None:
                tags["int8_miou_drop"] = f"{self.int8.report['miou_drop']:.6f}"
        if self.champion is not None:
            tags["champion_compared"] = self.champion.version
            tags["champion_mIoU_same_test"] = "n/a" if self.champion.mIoU is None else f"{self.champion.mIoU:.6f}"
        tags["promotion"] = self.promotion()[1][:5000]
        return tags

    def with_version(self, version: str) -> ModelCard:
        """The same card, naming its registered version."""
        return replace(self, version=version)

    def markdown(self) -> str:
        """Markdown for the version's description."""
        spec = self.spec
        per_class = self.evaluation.per_class if self.evaluation else []
        export = spec["export"]
        parts = [
            f"# {self.name} v{self.version or '?'}",
            f"{network_line(spec)}, {self.params_m:.1f}M parameters; exported task: {export['task']} at "
            f"{export['input_height']}x{export['input_width']}.",
            "## Data",
            f"- training data digest `{self.data_digest}` from `{self.train_source}`",
            f"- {len(per_class)} classes: {', '.join(r['name'] for r in per_class)}",
            "## Key settings",
            _table([[k, _fmt(v)] for k, v in self.key_settings.items()], ["spec key", "value"]),
            "## Test metrics",
            _table([[k, _fmt(v)] for k, v in self.metrics.items() if isinstance(v, int | float)], ["metric", "value"]),
            "### Per-class IoU",
            _table([[r["class"], r["name"], _fmt(float(r["iou"])) if r["iou"] not in (None, "") else "n/a"]
                    for r in per_class], ["id", "class", "IoU"]),
            "## AutoML",
            automl_text(self.selection),
            "## Conversion parity",
            _table([c.row() for c in self.conversions], ["conversion", "label agreement", "max abs diff", "mIoU",
                                                          "status"]),
            "## Champion gate",
            self.champion_text(),
            f"\nspec digest `{self.spec_digest}`; Prefect flow run `{self.flow_run_id}`; MLflow run `{self.run_id}`; "
            f"checkpoint `{Path(self.selection.checkpoint).name}` (sha256 `{self.checkpoint_sha256}`).",
        ]
        return "\n\n".join(parts)


    def champion_text(self) -> str:
        """Both scores on this run's test images and the verdict."""
        promote, why = self.promotion()
        rows = [[f"this version (v{self.version or '?'})", _fmt(self.metrics.get("mIoU"))]]
        if self.champion is not None:
            rows.append([f"champion v{self.champion.version}", _fmt(self.champion.mIoU) if self.champion.mIoU
                         is not None else f"n/a ({self.champion.error})"])
        verdict = "becomes **champion**" if promote else "stays a **candidate**"
        return (_table(rows, ["model", "test mIoU on this run's test split"]) + f"\n\nThis version {verdict}: {why}.")


def automl_text(selection: Selection) -> str:
    """The chosen trial and the study's trials as markdown."""
    if selection.trial is None:
        return "AutoML off: one training run with the spec's values."
    rows = [[t.number, t.state, "None" if t.mIoU is None else round(t.mIoU, 4), t.epochs, trial_label(t.params)]
            for t in selection.trials]
    return (f"Chosen trial **{selection.trial}** of study `{selection.study}` (validation mIoU "
            f"{selection.mIoU:.4f}).\n\n" + _table(rows, ["trial", "state", "val mIoU", "epochs", "params"]))


def _table(rows: list[list[Any]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("n/a" if v is None else str(v))
