"""The pipeline's stages, in order: lineage, training and selection, evaluation, conversions, overlays,
registration, summary. Each takes the tracked run and what earlier stages returned, and returns a typed result."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from mlflow.exceptions import MlflowException
from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.common import TrackedRun
from flows.params import Stages
from oneformer.actions import TABLE, layout_of
from oneformer.artifacts import write_text
from oneformer.errors import OneFormerError
from oneformer.model.checkpoint import read_checkpoint
from oneformer.spec import ExperimentSpec, dump_spec, flatten, public_dict, with_values
from tasks import actions, charts, stage_cache, tracking
from tasks.automl import run_study, selection, shown, storage_url, study_key, study_name, study_rows
from tasks.card import ModelCard, key_settings
from tasks.locks import exclusive
from tasks.parents import resolve_parent
from tasks.registry import champion_params, register
from tasks.results import ChampionScore, Conversion, Evaluation, Lineage, Registration, Selection
from tasks.sources import data_overrides
from tasks.staging import data_digest
from tasks.training import train_once

# Spec keys that do not change what a study searches or trains on (budgets, places, workers): changing them
# continues the study instead of starting a new one.
NOT_TRAINING = ("automl.n_trials", "automl.timeout", "automl.trial_timeout", "automl.n_jobs", "automl.storage",
                "automl.study_name", "train.results_dir", "train.resume_training_checkpoint_path", "train.num_gpus",
                "train.gpu_ids", "train.num_nodes", "train.num_processes", "train.verbose", "train.checkpoint_interval",
                "train.verify_data")


def digest(text: str) -> str:
    """Short sha256 of a text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_digest(spec: ExperimentSpec) -> str:
    """A digest of what a study trains: model, training, dataset settings and the search, not data paths or
    budgets (the data has its own digest)."""
    paths = {i.key for a in TABLE.values() for i in a.inputs}
    flat = flatten(spec.model_dump(mode="json"))
    kept = {k: v for k, v in flat.items() if k.startswith(("model.", "train.", "dataset.", "automl."))
            and k not in paths and k not in NOT_TRAINING and not k.endswith(".num_workers")}
    return digest(json.dumps(kept, sort_keys=True, default=str))


def lineage(r: TrackedRun) -> Lineage:
    """Digest the spec and the training data; record the data as MLflow dataset inputs of the run."""
    spec, sources = r.spec, r.inputs.sources
    spec_digest = digest(dump_spec(spec))
    data = data_digest("train", sources, r.inputs.s3_secret_block, data_overrides(r.inputs.overrides, "train"),
                       layout_of(spec)) \
        if sources.train else \
        {"all": stage_cache.data_digest(spec, "train")[:20]}
    train_source = sources.train or str(spec.dataset.train.images)
    tracking_inputs = [("train", train_source, data.get("train", data["all"]), "training")]
    if sources.eval:
        tracking_inputs.append(("eval", sources.eval, data.get("eval", data["all"]), "validation"))
    for name, source, value, context in tracking_inputs:
        tracking.log_dataset(r.client, r.run, name, source, value, context)
    training = training_digest(spec)
    r.set_tags({"spec_digest": spec_digest, "data_digest": data["all"], "training_digest": training})
    return Lineage(spec_digest, data, train_source, training)


def train(r: TrackedRun, automl_policy: bool, lineage: Lineage) -> Selection:
    """An Optuna study (or one run with the spec's values) and the best checkpoint by validation mIoU.

    The study is the one of this data and training spec; a new one warm-starts from the champion's parameters.
    This run trains automl.n_trials new trials (a resumed run only those it has not finished)."""
    if automl_policy:
        key = study_key(lineage.data["all"], lineage.training)
        name = study_name(r.spec, key)
        r.set_tags({"optuna.study": name})
        progress = create_progress_artifact(0.0, key="automl-progress", description=f"trials of study {name}")

        def report(done: int, total: int, rows: list[dict]) -> None:
            update_progress_artifact(progress, 100.0 * done / max(total, 1), description=f"{done}/{total} trials")

        with exclusive("study", f"{shown(storage_url(r.spec))}#{name}"):  # the password in neither name nor error
            study = run_study(r.spec, r.uri, r.experiment, r.run, key, r.run_key, champion_params(r.client,
                              r.spec.model_name), report)
        update_progress_artifact(progress, 100.0, description="study done")
        create_table_artifact(study_rows(study), key="automl-trials", description=f"every trial of study {name}")
        selected = selection(study)
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
    metrics = r.cached(actions.evaluate, "evaluate", ("checkpoint",))(spec=spec, checkpoint=selected.checkpoint)
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
        export = r.cached(actions.export, "export", ("checkpoint",))
        report = export(spec=r.staged("export"), checkpoint=selected.checkpoint, onnx_file=onnx_file)
        out.append(Conversion("onnx", "PyTorch -> ONNX FP32", onnx_file, report))
        r.log_files([onnx_file, onnx_file + ".report.json"], "export")
        r.log_metrics({"export_agreement": report["agreement"]})
    if stages.quantize and onnx_file:
        int8_file = str(spec.action_dir("quantize") / "model.int8.onnx")
        report = r.cached(actions.quantize, "quantize", ("model_path",))(spec=r.staged("quantize"),
                                                                         model_path=onnx_file, onnx_file=int8_file)
        conversion = Conversion("int8", "ONNX FP32 -> INT8", int8_file, report)
        out.append(conversion)
        r.log_files([int8_file, int8_file + ".report.json"], "quantize")
        r.log_metrics({"int8_agreement": report["agreement"], "int8_val_mIoU": report["mIoU"]["int8"] or 0.0,
                       "fp32_val_mIoU": report["mIoU"]["fp32"] or 0.0})
        record_gate(r, conversion)
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


def record_gate(r: TrackedRun, conversion: Conversion) -> None:
    """A conversion's gate verdict as run tags, and when it failed, a warning and a Prefect artifact: the run goes
    on and registers the version as a candidate that cannot become champion."""
    state = "passed" if conversion.passed else "failed"
    r.set_tags({f"{conversion.kind}_gate": state, f"{conversion.kind}_gate_verdict": conversion.verdict[:5000]})
    if conversion.passed:
        return
    get_run_logger().warning("%s misses its gate (%s); the version will be registered as a candidate only",
                             conversion.name, conversion.verdict)
    create_markdown_artifact(
        key=f"{conversion.kind.replace('_', '-')}-gate", description=f"{conversion.name}: gate failed",
        markdown=f"# {conversion.name}: gate failed\n\n{conversion.verdict}\n\nReport: `{conversion.file}.report.json`"
                 f"\n\nThe version is registered as `candidate`; it cannot become `champion`.")


def overlays(r: TrackedRun, selected: Selection) -> str | None:
    """Inference overlays of the selected checkpoint (the first eight logged); None without inference images."""
    if not (r.inputs.sources.inference or r.spec.inference.images_dir):
        return None
    result = r.cached(actions.inference, "inference", ("model",))(spec=r.staged("inference"),
                                                                  model=selected.checkpoint)
    folder = Path(result["results_dir"]) / "overlays"
    r.log_files(sorted(folder.glob("*.png"))[:8], "overlays")
    return str(folder)


def champion(r: TrackedRun, evaluation: Evaluation | None) -> ChampionScore | None:
    """The current champion scored on this run's test split (its registered checkpoint, the same evaluation), so
    the alias moves on numbers from the same images; None when there is no champion yet."""
    name = r.spec.model_name
    try:
        version = str(r.client.get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None
    if evaluation is None:
        return ChampionScore(version, None, {}, "the evaluate stage is off: no score on this run's test split")
    folder = r.results / "champion" / f"v{version}"
    try:
        checkpoint = resolve_parent(f"models:/{name}/{version}", "checkpoint", r.uri, str(folder / "model"),
                                    r.inputs.s3_secret_block)
        spec = with_values(r.staged("evaluate"), {"evaluate.results_dir": str(folder / "evaluate")},
                           "champion evaluate spec")
        metrics = r.cached(actions.evaluate, "evaluate", ("checkpoint",))(spec=spec, checkpoint=checkpoint)
    except (OneFormerError, MlflowException) as exc:
        get_run_logger().warning("champion v%s could not be scored on this run's test split: %s", version, exc)
        return ChampionScore(version, None, {}, f"could not be scored on this run's test split: {exc}"[:2000])
    metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    get_run_logger().info("champion v%s on this run's test split: mIoU %.4f (this run's model: %.4f)", version,
                          metrics["mIoU"], evaluation.metrics["mIoU"])
    r.log_metrics({"mIoU": metrics["mIoU"]}, "champion_test_")
    return ChampionScore(version, float(metrics["mIoU"]), metrics)


def card(r: TrackedRun, selected: Selection, evaluation: Evaluation | None, conversions: tuple[Conversion, ...],
         lineage: Lineage, champion_score: ChampionScore | None = None) -> ModelCard:
    """The model card of this run's version."""
    checkpoint = read_checkpoint(selected.checkpoint)
    spec = public_dict(r.spec)  # the card goes into the registry: no secret in it
    flat = flatten(spec)
    return ModelCard(name=r.spec.model_name, spec=spec, selection=selected,
                     evaluation=evaluation, conversions=conversions,
                     params_m=sum(v.numel() for v in checkpoint.state_dict.values()) / 1e6,
                     key_settings={**key_settings(flat), **selected.params},
                     data_digest=lineage.data["all"], train_source=lineage.train_source,
                     spec_digest=lineage.spec_digest, flow_run_id=r.flow_run_id, run_id=r.run,
                     checkpoint_sha256=stage_cache.file_digest(selected.checkpoint)[:16], run_key=r.run_key,
                     champion=champion_score)


def register_version(r: TrackedRun, model_card: ModelCard, conversions: tuple[Conversion, ...]) -> Registration:
    """The ONNX model registered under the spec's model name, with the card, tags and aliases."""
    onnx_file = next(c.file for c in conversions if c.kind == "onnx")
    registration = register(r.uri, r.experiment, model_card, onnx_file)
    base = tracking.shown(r.uri) if r.uri.startswith("http") else "http://127.0.0.1:5000"
    link = f"{base.rstrip('/')}/#/models/{registration.name}/versions/{registration.version}"
    if registration.new:
        create_link_artifact(link, link_text=f"{registration.name} v{registration.version}",
                             key="registered-model-version", description="The model version this run registered")
        r.set_tags({"registered_version": registration.version, "promoted": str(registration.promoted)})
    else:  # the MLflow run's description (its note) says so too, linking the version it already is
        create_link_artifact(link, link_text=f"{registration.name} v{registration.version} (already registered)",
                             key="registered-model-version", description=registration.verdict)
        r.set_tags({"registered_version": registration.version, "promoted": "False", "registry": "unchanged",
                    "mlflow.note.content": f"{registration.headline}: [{registration.name} "
                                           f"v{registration.version}]({link}). {registration.verdict}"})
    return registration


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
    if registration and registration.new:
        lines += ["", f"Registered **{registration.name} v{registration.version}** (aliases: "
                      f"{', '.join(registration.aliases)}): {registration.verdict}"]
    elif registration:
        lines += ["", f"**{registration.headline}**: this run's checkpoint is "
                      f"**{registration.name} v{registration.version}** (`{registration.model_uri}`) already "
                      f"(aliases: {', '.join(registration.aliases) or 'none'}); {registration.verdict}"]
    lines += ["", f"MLflow run: {r.url} (tracking URI `{tracking.shown(r.uri)}`)"]
    text = "\n".join(lines)
    create_markdown_artifact(markdown=text, key="oneformer-pipeline", description="OneFormer pipeline result")
    r.log_files([write_text(r.results / "summary.md", text)], "")
    return text
