"""Charts for MLflow: per-class IoU bars and the AutoML optimization history, as PNG files."""

from __future__ import annotations

from pathlib import Path

# Figure objects render with the Agg canvas on their own: no pyplot, so no process-wide backend is chosen here.
from matplotlib.figure import Figure


def per_class_iou(rows: list[dict], out: Path) -> Path:
    """Horizontal bars of IoU per class (classes absent from the data are shown empty)."""
    names = [r["name"] for r in rows]
    values = [float(r["iou"]) if r["iou"] not in (None, "") else 0.0 for r in rows]
    fig = Figure(figsize=(6, 0.3 * len(rows) + 1.2))
    ax = fig.subplots()
    ax.barh(names, values, color="#3b7dd8")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("IoU")
    ax.set_title("Per-class IoU")
    for y, v in enumerate(values):
        ax.text(min(v + 0.01, 0.9), y, f"{v:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def optimization_history(trials: list[dict], out: Path) -> Path:
    """Each trial's best validation mIoU (pruned ones marked) with the best-so-far line."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    best, line = float("-inf"), []
    for t in sorted(trials, key=lambda t: t["number"]):
        value = t.get("mIoU")
        color = {"COMPLETE": "#3b7dd8", "PRUNED": "#aaaaaa"}.get(t["state"], "#d62728")
        if value is not None:
            ax.scatter(t["number"], value, color=color, zorder=3)
            if t["state"] == "COMPLETE":
                best = max(best, value)
        line.append(best if best > float("-inf") else None)
    xs = [t["number"] for t in sorted(trials, key=lambda t: t["number"])]
    ax.step(xs, [v if v is not None else float("nan") for v in line], where="post", color="#ff7f0e", label="best")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation mIoU")
    ax.set_title("AutoML optimization history (grey: pruned)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out
