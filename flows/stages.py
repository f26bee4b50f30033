"""The pipeline's stages, in order: lineage, training and selection, evaluation, conversions, overlays,
registration, summary. Each takes the tracked run and what earlier stages returned, and returns a typed result."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import TrackedRun
from flows.params import Stages
from oneformer.artifacts import sha256, write_text
from oneformer.model.checkpoint import read_checkpoint
from oneformer.spec import dump_spec, flatten
from tasks import actions, charts, tracking
from tasks.automl import run_study, selection
from tasks.card import KEY_SETTINGS, ModelCard
from tasks.registry import register
from tasks.results import Conversion, Evaluation, Lineage, Registration, Selection
from tasks.staging import data_digest
from tasks.training import train_once


def digest(text: str) -> str:
    """Short sha256 of a text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def lineage(r: TrackedRun) -> Lineage:
    """Digest the spec and the training data; record the data as MLflow dataset inputs of the run."""
    spec, sources = r.spec, r.inputs.sources
    spec_digest = digest(dump_spec(spec))
    data = data_digest("train", sources, r.inputs.s3_secret_block) if sources.train else \
        {"all": digest(json.dumps([spec.dataset.train.images, spec.dataset.train.annotations]))}
    train_source = sources.train or str(spec.dataset.train.images)
    tracking_inputs = [("train", train_source, data.get("train", data["all"]), "training")]
    if sources.eval:
        tracking_inputs.append(("eval", sources.eval, data.get("eval", data["all"]), "validation"))
    for name, source, value, context in tracking_inputs:
        tracking.log_dataset(r.client, r.run, name, source, value, context)
    r.set_tags({"spec_digest": spec_digest, "data_digest": data["all"]})
    return Lineage(spec_digest, data, train_source)


def train(r: TrackedRun, automl_policy: bool) -> Selection:
    """An Optuna study (or one run with the spec's values) and the best checkpoint by validation mIoU."""
    if automl_policy:
        selected = selection(run_study(r.spec, r.uri, r.experiment, r.run))
        trials = [{"number": t.number, "state": t.state, "mIoU": t.mIoU} for t in selected.trials]
        r.log_files([charts.optimization_history(trials, r.results / "optimization_history.png")], "charts")
        r.log_metrics({"best_trial_val_mIoU": selected.mIoU,
                       "trial_epochs_total": sum(t.epochs or 0 for t in selected.trials)})
    else:
        with tracking.child_run(r.client, r.experiment, "train", r.run) as child:
            result = train_once(r.spec, r.uri, child)
        if not result["best"]:
            raise RuntimeError(f"training in {result['train_dir']} produced no checkpoint with a validation mIoU")
        selected = Selection(checkpoint=result["best"]["path"], mIoU=result["mIoU"])
    get_run_logger().info("selected checkpoint %s (validation mIoU %.4f)", selected.checkpoint, selected.mIoU)
    r.set_tags({"checkpoint": selected.checkpoint})
    r.log_files([selected.checkpoint], "checkpoint")  # so action flows can take this run as their parent
    return selected


def evaluate(r: TrackedRun, selected: Selection) -> Evaluation:
    """Test metrics and per-class IoU of the selected checkpoint, logged with a chart."""
    spec = r.staged("evaluate")
    metrics = actions.evaluate(spec, selected.checkpoint)
    folder = spec.action_dir("evaluate")
    with open(folder / "per_class_iou.csv") as f:
        per_class = list(csv.DictReader(f))
    r.log_metrics(metrics, "test_")
    r.log_files([folder / "metrics.json", folder / "per_class_iou.csv"], "evaluate")
    r.log_files([charts.per_class_iou(per_class, folder / "per_class_iou.png")], "charts")
    return Evaluation(metrics, per_class, str(folder))


def convert(r: TrackedRun, selected: Selection, stages: Stages, precisions: list[str]) -> tuple[Conversion, ...]:
    """ONNX export, INT8 quantization and TensorRT engines, each with its parity report."""
    spec = r.spec
    out: list[Conversion] = []
    onnx_file = int8_file = None
    if stages.export or stages.quantize:
        onnx_file = str(spec.action_dir("export") / "model.onnx")
        report = actions.export(r.staged("export"), selected.checkpoint, onnx_file)
        out.append(Conversion("onnx", "PyTorch -> ONNX FP32", onnx_file, report))
        r.log_files([onnx_file, onnx_file + ".report.json"], "export")
        r.log_metrics({"export_agreement": report["agreement"]})
    if stages.quantize and onnx_file:
        int8_file = str(spec.action_dir("quantize") / "model.int8.onnx")
        report = actions.quantize(r.staged("quantize"), onnx_file, int8_file)
        out.append(Conversion("int8", "ONNX FP32 -> INT8", int8_file, report))
        r.log_files([int8_file, int8_file + ".report.json"], "quantize")
        r.log_metrics({"int8_agreement": report["agreement"], "int8_val_mIoU": report["mIoU"]["int8"] or 0.0})
    if stages.gen_trt_engine and onnx_file:
        for precision in precisions:
            source = int8_file if precision == "int8" else onnx_file
            if source is None:
                get_run_logger().info("TensorRT int8 skipped: no INT8 ONNX file (quantize stage off)")
                continue
            report = actions.gen_trt_engine(spec, source, precision)
            kind, name = f"engine_{precision}", f"ONNX -> TensorRT {precision}"
            if "skipped" in report:
                out.append(Conversion(kind, name, None, report, skipped=report["skipped"]))
                continue
            out.append(Conversion(kind, name, report["engine_file"], report))
            r.log_files([report["engine_file"], report["engine_file"] + ".report.json"], "tensorrt")
    return tuple(out)


def overlays(r: TrackedRun, selected: Selection) -> str | None:
    """Inference overlays of the selected checkpoint (the first eight logged); None without inference images."""
    if not (r.inputs.sources.inference or r.spec.inference.images_dir):
        return None
    folder = Path(actions.inference(r.staged("inference"), selected.checkpoint)["results_dir"]) / "overlays"
    r.log_files(sorted(folder.glob("*.png"))[:8], "overlays")
    return str(folder)


def card(r: TrackedRun, selected: Selection, evaluation: Evaluation | None, conversions: tuple[Conversion, ...],
         lineage: Lineage) -> ModelCard:
    """The model card of this run's version."""
    checkpoint = read_checkpoint(selected.checkpoint)
    flat = flatten(r.spec.model_dump(mode="json"))
    return ModelCard(name=r.spec.model_name, spec=r.spec.model_dump(mode="json"), selection=selected,
                     evaluation=evaluation, conversions=conversions,
                     params_m=sum(v.numel() for v in checkpoint.state_dict.values()) / 1e6,
                     key_settings={**{k: v for k, v in flat.items() if k in KEY_SETTINGS}, **selected.params},
                     data_digest=lineage.data["all"], train_source=lineage.train_source,
                     spec_digest=lineage.spec_digest, flow_run_id=r.flow_run_id, run_id=r.run,
                     checkpoint_sha256=sha256(Path(selected.checkpoint))[:16])


def register_version(r: TrackedRun, model_card: ModelCard, conversions: tuple[Conversion, ...]) -> Registration:
    """The ONNX model registered under the spec's model name, with the card, tags and aliases."""
    onnx_file = next(c.file for c in conversions if c.kind == "onnx")
    return register(r.uri, r.experiment, model_card, onnx_file)


def summary(r: TrackedRun, selected: Selection, evaluation: Evaluation | None, conversions: tuple[Conversion, ...],
            artifacts: dict[str, str], registration: Registration | None) -> str:
    """The run's markdown summary: a Prefect artifact, summary.md in the results folder and in MLflow."""
    metrics = evaluation.metrics if evaluation else {}
    lines = ["# OneFormer pipeline", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float)]
    lines += ["", f"Chosen: trial {selected.trial} (val mIoU {selected.mIoU:.4f}), checkpoint "
                  f"`{selected.checkpoint}`", ""]
    if conversions:
        lines += ["| conversion | agreement | max abs diff | mIoU | status |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(c.row()) + " |" for c in conversions]
    lines += ["", "Artifacts:"] + [f"- {k}: `{v}`" for k, v in artifacts.items()]
    if registration:
        lines += ["", f"Registered **{registration.name} v{registration.version}** (aliases: "
                      f"{', '.join(registration.aliases)})"]
    lines += ["", f"MLflow run: {r.url} (tracking URI `{r.uri}`)"]
    text = "\n".join(lines)
    create_markdown_artifact(markdown=text, key="oneformer-pipeline", description="OneFormer pipeline result")
    r.log_files([write_text(r.results / "summary.md", text)], "")
    return text
