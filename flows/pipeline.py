"""oneformer-pipeline: stage data, AutoML (or one training run), best checkpoint, evaluate, export, quantize,
TensorRT, inference overlays, and registration in MLflow, reported to Prefect at every step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.common import pipeline_spec
from flows.params import Stages, Tracking, TrtPrecision
from oneformer.spec import ExperimentSpec, dump_spec
from tasks import tracking
from tasks.actions import evaluate, export, gen_trt_engine, inference, quantize, with_values
from tasks.sources import DataSources
from tasks.staging import data_digest, load_s3_secret, stage_data


def digest(text: str) -> str:
    """Short sha256 of a text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@flow(name="oneformer-pipeline", log_prints=True)
def pipeline(
    spec: Annotated[str | None, Field(description="Experiment spec YAML (TAO keys); embedded defaults when empty")]
    = None,
    overrides: Annotated[dict[str, Any], Field(description="Dotted spec keys, e.g. train.num_epochs")] = {},  # noqa: B006
    sources: Annotated[DataSources, Field(description="Dataset URIs in TAO's bucket layout")] = DataSources(),
    automl_policy: Annotated[bool, Field(description="On: an Optuna study; off: train once with the spec's values")]
    = True,
    n_trials: Annotated[int | None, Field(ge=1, le=500, description="AutoML trial budget (default automl.n_trials)")]
    = None,
    stages: Stages = Stages(),
    trt_precisions: list[TrtPrecision] = ["fp16", "int8"],  # noqa: B006
    model_name: Annotated[str | None, Field(description="Registered model name (default: the spec's)")] = None,
    results_dir: Annotated[str | None, Field(description="Default: the spec's results_dir")] = None,
    tracking_config: Tracking = Tracking(),
    s3_secret_block: Annotated[str | None, Field(description="Prefect Secret block with S3 settings (JSON)")] = None,
) -> dict:
    """The whole chain; returns the registered version, metrics and artifact paths."""
    logger = get_run_logger()
    filled = load_s3_secret(s3_secret_block)
    if filled:
        logger.info("S3 settings from Secret block %r: %s", s3_secret_block, ", ".join(filled))
    base = pipeline_spec(spec, overrides, results_dir, model_name, n_trials)
    results = Path(base.results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    staged = stage_data("train", sources)
    run_spec = with_values(base, {**staged, "results_dir": str(results)})
    spec_file = results / "spec.yaml"
    spec_file.write_text(dump_spec(run_spec))
    uri = tracking.tracking_uri(tracking_config.tracking_uri, results)
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, tracking_config.experiment, results / "mlartifacts")
    flow_run_id = str(runtime.flow_run.id or "local")
    run = tracking.start_run(c, exp, f"pipeline-{runtime.flow_run.name or 'local'}", tags={
        "prefect.flow_run_id": flow_run_id, "automl_policy": str(automl_policy)})
    logger.info("MLflow run %s in %s", run, uri)
    try:
        out = _chain(run_spec, sources, automl_policy, stages, trt_precisions, uri, c, exp, run, spec_file,
                     flow_run_id)
    except BaseException:
        c.set_terminated(run, "FAILED")
        raise
    c.set_terminated(run, "FINISHED")
    return out


def _chain(spec: ExperimentSpec, sources: DataSources, automl_policy: bool, stages: Stages, precisions: list[str],
           uri: str, c: Any, exp: str, run: str, spec_file: Path, flow_run_id: str) -> dict:  # noqa: ANN401
    from tasks import charts
    from tasks.automl import best_trial, run_study
    from tasks.registry import register
    from tasks.training import train_once

    logger = get_run_logger()
    results = Path(spec.results_dir)
    tracking.log_spec(c, run, spec, spec_file)
    spec_digest = digest(dump_spec(spec))
    data = data_digest("train", sources) if sources.train else {"all": digest(json.dumps(
        [spec.dataset.train.images, spec.dataset.train.annotations]))}
    train_source = sources.train or str(spec.dataset.train.images)
    tracking.log_dataset(c, run, "train", train_source, data.get("train", data["all"]), "training")
    if sources.eval:
        tracking.log_dataset(c, run, "eval", sources.eval, data.get("eval", data["all"]), "validation")
    tracking.set_tags(c, run, {"spec_digest": spec_digest, "data_digest": data["all"]})

    # ---- training: an Optuna study, or one run with the spec's values
    trials: list[dict] = []
    if automl_policy:
        study = run_study(spec, uri, exp, run)
        best = best_trial(study)
        checkpoint = best.user_attrs["checkpoint"]
        trials = [{"number": t.number, "state": t.state.name, "mIoU": t.value if t.value is not None else
                   (max(t.intermediate_values.values()) if t.intermediate_values else None),
                   "epochs": t.user_attrs.get("epochs"), "params": t.params} for t in study.trials]
        chosen = {"trial": best.number, "mIoU": best.value, "params": best.params, "checkpoint": checkpoint,
                  "study": study.study_name}
        hist = charts.optimization_history(trials, results / "optimization_history.png")
        tracking.log_files(c, run, [hist], "charts")
        tracking.log_metrics(c, run, {"best_trial_val_mIoU": best.value,
                                      "trial_epochs_total": sum(t["epochs"] or 0 for t in trials)})
    else:
        child = tracking.start_run(c, exp, "train", run)
        result = train_once(spec, uri, child)
        if not result["best"]:
            raise RuntimeError(f"training in {result['train_dir']} produced no checkpoint with a validation mIoU")
        checkpoint = result["best"]["path"]
        chosen = {"trial": None, "mIoU": result["mIoU"], "params": {}, "checkpoint": checkpoint}
    logger.info("selected checkpoint %s (validation mIoU %.4f)", checkpoint, chosen["mIoU"])
    tracking.set_tags(c, run, {"checkpoint": checkpoint})
    tracking.log_files(c, run, [checkpoint], "checkpoint")  # so action flows can take this run as their parent
    out: dict[str, Any] = {"checkpoint": checkpoint, "chosen": chosen, "trials": trials, "mlflow_run_id": run,
                           "tracking_uri": uri, "artifacts": {}}

    # ---- evaluate
    metrics: dict = {}
    per_class: list[dict] = []
    if stages.evaluate:
        eval_spec = with_values(spec, stage_data("evaluate", sources))
        metrics = evaluate(eval_spec, checkpoint)
        ev = eval_spec.action_dir("evaluate")
        import csv

        with open(ev / "per_class_iou.csv") as f:
            per_class = list(csv.DictReader(f))
        bars = charts.per_class_iou(per_class, ev / "per_class_iou.png")
        tracking.log_metrics(c, run, metrics, "test_")
        tracking.log_files(c, run, [ev / "metrics.json", ev / "per_class_iou.csv"], "evaluate")
        tracking.log_files(c, run, [bars], "charts")
        out["metrics"] = metrics

    # ---- export, quantize, engines
    onnx_file = int8_file = None
    parity: list[list[Any]] = []
    int8_report: dict = {}
    if stages.export or stages.quantize:
        onnx_file = str(spec.action_dir("export") / "model.onnx")
        rep = export(with_values(spec, stage_data("export", sources)), checkpoint, onnx_file)
        parity.append(["PyTorch -> ONNX FP32", f"{rep['agreement']:.4%}", _maxdiff(rep), "", "pass"])
        tracking.log_files(c, run, [onnx_file, onnx_file + ".report.json"], "export")
        tracking.log_metrics(c, run, {"export_agreement": rep["agreement"]})
        out["artifacts"]["onnx"] = onnx_file
    if stages.quantize and onnx_file:
        int8_file = str(spec.action_dir("quantize") / "model.int8.onnx")
        int8_report = quantize(with_values(spec, stage_data("quantize", sources)), onnx_file, int8_file)
        parity.append(["ONNX FP32 -> INT8", f"{int8_report['agreement']:.4%}", _maxdiff(int8_report),
                       f"{int8_report['mIoU']['fp32']:.4f} -> {int8_report['mIoU']['int8']:.4f}",
                       "pass" if int8_report["passed"] else "FAIL"])
        tracking.log_files(c, run, [int8_file, int8_file + ".report.json"], "quantize")
        tracking.log_metrics(c, run, {"int8_agreement": int8_report["agreement"],
                                      "int8_val_mIoU": int8_report["mIoU"]["int8"] or 0.0})
        out["artifacts"]["int8"] = int8_file
    engines = {}
    if stages.gen_trt_engine and onnx_file:
        for precision in precisions:
            source = int8_file if precision == "int8" else onnx_file
            if source is None:
                logger.info("TensorRT int8 skipped: no INT8 ONNX file (quantize stage off)")
                continue
            rep = gen_trt_engine(spec, source, precision)
            engines[precision] = rep
            if "skipped" in rep:
                parity.append([f"ONNX -> TensorRT {precision}", "", "", "", f"skipped: {rep['skipped'][:80]}"])
            else:
                parity.append([f"ONNX -> TensorRT {precision}", f"{rep['agreement']:.4%}", _maxdiff(rep), "", "pass"])
                tracking.log_files(c, run, [rep["engine_file"], rep["engine_file"] + ".report.json"], "tensorrt")
        out["engines"] = engines

    # ---- inference overlays
    if stages.inference and (sources.inference or spec.inference.images_dir):
        inf_spec = with_values(spec, stage_data("inference", sources))
        inf = inference(inf_spec, checkpoint)
        overlays = sorted((Path(inf["results_dir"]) / "overlays").glob("*.png"))[:8]
        tracking.log_files(c, run, overlays, "overlays")
        out["artifacts"]["overlays"] = str(Path(inf["results_dir"]) / "overlays")

    # ---- registration
    if stages.registry and onnx_file:
        from oneformer.checkpoint import read_checkpoint
        from oneformer.parity import sha256

        ckpt = read_checkpoint(checkpoint)
        n_params = sum(v.numel() for v in ckpt.state_dict.values()) / 1e6
        key = {k: v for k, v in _flat(spec).items() if k in KEY_SETTINGS}
        miou = metrics.get("mIoU", chosen["mIoU"])
        card = {"name": spec.model_name, "spec": spec.model_dump(mode="json"), "metrics": metrics,
                "per_class": per_class, "params_m": n_params, "task": spec.export.task,
                "input_size": f"{spec.export.input_height}x{spec.export.input_width}",
                "data_digest": data["all"], "train_source": sources.train or spec.dataset.train.images,
                "key_settings": {**key, **chosen["params"]}, "automl": _automl_text(chosen, trials),
                "parity": parity, "spec_digest": spec_digest, "flow_run_id": flow_run_id, "run_id": run,
                "checkpoint": checkpoint, "checkpoint_sha256": sha256(Path(checkpoint))[:16]}
        tags = {"mIoU": f"{miou:.6f}", "spec_digest": spec_digest, "data_digest": data["all"],
                "prefect_flow_run_id": flow_run_id, "mlflow_run_id": run,
                **{f"metric.{k}": f"{v:.6f}" for k, v in metrics.items() if isinstance(v, float)}}
        if int8_report:
            tags["int8_agreement"] = f"{int8_report['agreement']:.6f}"
        passed = bool(int8_report.get("passed", False))
        out["registered"] = register(uri, run, spec.model_name, onnx_file, checkpoint, card, tags, passed)

    summary = _summary(out, metrics, chosen, parity, uri, exp, run)
    create_markdown_artifact(markdown=summary, key="oneformer-pipeline", description="OneFormer pipeline result")
    (results / "summary.md").write_text(summary)
    tracking.log_files(c, run, [results / "summary.md"], "")
    return out


KEY_SETTINGS = ("train.optim.lr", "train.optim.backbone_multiplier", "train.optim.weight_decay", "train.num_epochs",
                "dataset.train.batch_size", "model.sem_seg_head.num_classes", "dataset.image_size",
                "train.optim.lr_scheduler")


def _flat(spec: ExperimentSpec) -> dict[str, Any]:
    from oneformer.spec import flatten

    return flatten(spec.model_dump(mode="json"))


def _maxdiff(report: dict) -> str:
    diff = report.get("max_abs_diff")
    if isinstance(diff, dict):
        return ", ".join(f"{k} {v:.1e}" for k, v in diff.items())
    return f"{diff:.1e}" if isinstance(diff, float) else ""


def _automl_text(chosen: dict, trials: list[dict]) -> str:
    if chosen.get("trial") is None:
        return "AutoML off: one training run with the spec's values."
    from tasks.automl import label

    rows = [f"| {t['number']} | {t['state']} | {t['mIoU'] if t['mIoU'] is None else round(t['mIoU'], 4)} | "
            f"{t['epochs']} | {label(t['params'])} |" for t in trials]
    return (f"Chosen trial **{chosen['trial']}** of study `{chosen.get('study')}` (validation mIoU "
            f"{chosen['mIoU']:.4f}).\n\n| trial | state | val mIoU | epochs | params |\n|---|---|---|---|---|\n"
            + "\n".join(rows))


def _summary(out: dict, metrics: dict, chosen: dict, parity: list, uri: str, exp: str, run: str) -> str:
    lines = ["# OneFormer pipeline", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float)]
    lines += ["", f"Chosen: trial {chosen.get('trial')} (val mIoU {chosen['mIoU']:.4f}), checkpoint "
                  f"`{chosen['checkpoint']}`", ""]
    if parity:
        lines += ["| conversion | agreement | max abs diff | mIoU | status |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in parity]
    lines += ["", "Artifacts:"] + [f"- {k}: `{v}`" for k, v in out["artifacts"].items()]
    reg = out.get("registered")
    if reg:
        lines += ["", f"Registered **{reg['name']} v{reg['version']}** (aliases: {', '.join(reg['aliases'])})"]
    lines += ["", f"MLflow run: {tracking.run_url(uri, exp, run)} (tracking URI `{uri}`)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the pipeline locally on Prefect's ephemeral API and print where to look at the result."""
    import argparse

    from oneformer.spec import parse_override

    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__)
    p.add_argument("--spec", help="experiment spec YAML")
    p.add_argument("--trials", type=int, help="AutoML trial budget")
    p.add_argument("--no-automl", action="store_true", help="train once with the spec's values")
    p.add_argument("--results-dir")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite in the results folder)")
    for source in ("train", "eval", "inference", "calibration"):
        p.add_argument(f"--{source}", help=f"{source} data URI (s3://..., file://... or a folder)")
    p.add_argument("overrides", nargs="*", help="dotted key=value spec overrides")
    a = p.parse_args(argv)
    result = pipeline(spec=a.spec, overrides=dict(parse_override(o) for o in a.overrides),
                      sources=DataSources(train=a.train, eval=a.eval, inference=a.inference,
                                          calibration=a.calibration),
                      automl_policy=not a.no_automl, n_trials=a.trials, results_dir=a.results_dir,
                      tracking_config=Tracking(tracking_uri=a.mlflow_uri))
    print(_closing(result))
    return result


def _closing(result: dict) -> str:
    """The end-of-run text: metrics, registered version, and how to open both UIs on this run."""
    import os
    import shlex
    import sys

    m = result.get("metrics", {})
    reg = result.get("registered") or {}
    uri = result["tracking_uri"]
    home = os.environ.get("PREFECT_HOME")
    prefix = f"PREFECT_HOME={shlex.quote(home)} " if home else ""
    bin_dir = Path(sys.executable).parent
    lines = ["", "=" * 72, "oneformer-pipeline finished",
             "  test metrics: " + ", ".join(f"{k} {m[k]:.4f}" for k in ("mIoU", "PQ", "AP") if k in m),
             f"  chosen: trial {result['chosen'].get('trial')} -> {result['checkpoint']}"]
    if reg:
        lines.append(f"  registered: {reg['name']} v{reg['version']} ({', '.join(reg['aliases'])}) -> "
                     f"{reg['model_uri']}")
    lines += [f"  {k}: {v}" for k, v in result["artifacts"].items()]
    lines += ["", "Open the MLflow UI:",
              f"  {bin_dir}/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000",
              "  then http://127.0.0.1:5000",
              "Open the Prefect UI (runs from the local ephemeral API):",
              f"  {prefix}{bin_dir}/prefect server start --host 127.0.0.1 --port 4200",
              "  then http://127.0.0.1:4200", "=" * 72]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
