"""MLflow model registry: an ONNX model version with the checkpoint, tags, a model card, and alias rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import tracking


def signature(onnx_file: Path) -> ModelSignature:
    """Input and output tensor specs read from the ONNX graph (dynamic axes become -1)."""
    model = onnx.load(str(onnx_file), load_external_data=False)

    def specs(values: Any) -> Schema:  # noqa: ANN401 - onnx ValueInfo repeated field
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(TensorSpec(np.dtype(dtype), shape, v.name))
        return Schema(out)

    return ModelSignature(inputs=specs(model.graph.input), outputs=specs(model.graph.output))


def champion_mIoU(c: mlflow.MlflowClient, name: str) -> tuple[str | None, float | None]:
    """The current champion's version and mIoU tag, or (None, None)."""
    try:
        mv = c.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    value = mv.tags.get("mIoU")
    return mv.version, float(value) if value not in (None, "") else None


def _table(rows: list[list[Any]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:  # noqa: ANN401
    return f"{v:.4f}" if isinstance(v, float) else ("n/a" if v is None else str(v))


def model_card(card: dict) -> str:
    """Markdown for the version's description: what this model is and whether it can ship."""
    spec, m = card["spec"], card["metrics"]
    classes = ", ".join(r["name"] for r in card["per_class"])
    parts = [
        f"# {card['name']} v{card.get('version', '?')}",
        f"OneFormer ({spec['model']['backbone']['name']}, Swin embed {spec['model']['backbone']['swin']['embed_dim']},"
        f" depths {spec['model']['backbone']['swin']['depths']}), {card['params_m']:.1f}M parameters, "
        f"{spec['model']['one_former']['num_object_queries']} queries; exported task: {card['task']} at "
        f"{card['input_size']}.",
        "## Data",
        f"- training data digest `{card['data_digest']}` from `{card['train_source']}`",
        f"- {len(card['per_class'])} classes: {classes}",
        "## Key settings",
        _table([[k, _fmt(v)] for k, v in card["key_settings"].items()], ["spec key", "value"]),
        "## Validation metrics",
        _table([[k, _fmt(v)] for k, v in m.items() if isinstance(v, int | float)], ["metric", "value"]),
        "### Per-class IoU",
        _table([[r["class"], r["name"], _fmt(float(r["iou"])) if r["iou"] not in (None, "") else "n/a"]
                for r in card["per_class"]], ["id", "class", "IoU"]),
        "## AutoML",
        card["automl"],
        "## Conversion parity",
        _table(card["parity"], ["conversion", "label agreement", "max abs diff", "mIoU", "status"]),
        f"\nspec digest `{card['spec_digest']}`; Prefect flow run `{card['flow_run_id']}`; MLflow run "
        f"`{card['run_id']}`; checkpoint `{Path(card['checkpoint']).name}` (sha256 `{card['checkpoint_sha256']}`).",
    ]
    return "\n\n".join(parts)


@task(name="register", task_run_name="register {name}", cache_policy=NO_CACHE)
def register(tracking_uri: str, run_id: str, name: str, onnx_file: str, checkpoint: str, card: dict,
             tags: dict[str, Any], int8_passed: bool) -> dict:
    """Log the ONNX model (with the checkpoint) in the run, register it, tag it, and move the aliases."""
    logger = get_run_logger()
    c = tracking.client(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx.load(onnx_file), name="model", signature=signature(Path(onnx_file)),
                                     registered_model_name=name, extra_files=[checkpoint],
                                     onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False)
    version = str(info.registered_model_version)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))
    card = {**card, "version": version}
    c.update_model_version(name, version, description=model_card(card))
    c.set_registered_model_alias(name, "candidate", version)
    old, old_miou = champion_mIoU(c, name)
    miou = float(tags["mIoU"])
    promote = int8_passed and (old_miou is None or miou >= old_miou)
    if promote:
        c.set_registered_model_alias(name, "champion", version)
        logger.info("%s v%s is the champion (mIoU %.4f%s)", name, version, miou,
                    f", was v{old} at {old_miou:.4f}" if old else "")
    else:
        why = "INT8 agreement failed" if not int8_passed else f"mIoU {miou:.4f} < champion v{old}'s {old_miou:.4f}"
        logger.info("%s v%s stays a candidate: %s", name, version, why)
    aliases = c.get_model_version(name, version).aliases
    return {"name": name, "version": version, "aliases": list(aliases), "model_uri": f"models:/{name}/{version}",
            "champion": version if promote else old}
