"""oneformer-pipeline: stage data, AutoML (or one training run), best checkpoint, evaluate, export, quantize,
TensorRT, inference overlays, and registration in MLflow, reported to Prefect at every step."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from flows.common import end_trials, on_failure, tracked_run
from flows.params import ARCH_HELP, S3_BLOCK, ActionInputs, Stages, Tracking, TrtPrecision, described, refuse_secrets
from oneformer.arch_spec import ARCHS, Arch
from tasks import tracking
from tasks.sources import DataSources

TIMEOUT_S = 20 * 3600  # a nightly run must end before the next night's starts


def run_name() -> str:
    """`<model name>-<UTC date and time>` for the Prefect UI (the spec's model name is read later, so the
    parameter or `pipeline`)."""
    from datetime import datetime

    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{params.get('model_name') or 'pipeline'}-{'resume-' if params.get('resume') else ''}{stamp}"


@flow(name="oneformer-pipeline", log_prints=True, flow_run_name=run_name, timeout_seconds=TIMEOUT_S,
      on_failure=[on_failure, end_trials], on_crashed=[on_failure, end_trials],
      on_cancellation=[on_failure, end_trials])
@described
def pipeline(
    spec: Annotated[str | None, Field(description="Experiment spec YAML (TAO keys); embedded defaults when empty")]
    = None,
    arch: Annotated[Arch | None, Field(description=ARCH_HELP)] = None,
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
    s3_secret_block: Annotated[str | None, Field(description=S3_BLOCK)] = None,
    resume: Annotated[bool, Field(description="Continue the last unfinished run in results_dir: its finished trials "
                                              "count toward n_trials and its finished stages are reused")] = False,
) -> dict:
    """The whole chain; returns the registered version, metrics and artifact paths."""
    # here, not at the top: a worker imports this module only to run a cancelled or crashed run's hooks, and the
    # stages' imports (Lightning, Optuna, ONNX, matplotlib) would double the time those take
    from flows import stages as stage

    values = {**overrides, **({"model_name": model_name} if model_name else {}),
              **({"automl.n_trials": n_trials} if n_trials else {})}
    inputs = ActionInputs(spec=spec, arch=arch, overrides=values, sources=sources, results_dir=results_dir,
                          tracking_config=tracking_config, s3_secret_block=s3_secret_block)
    with tracked_run("pipeline", inputs, "train", "spec.yaml", {"automl_policy": str(automl_policy)}, resume) as r:
        lineage = stage.lineage(r)
        selected = stage.train(r, automl_policy, lineage)
        evaluation = stage.evaluate(r, selected) if stages.evaluate else None
        conversions = stage.convert(r, selected, stages, trt_precisions)
        artifacts = {c.kind: c.file for c in conversions if c.file and c.kind in ("onnx", "int8")}
        if stages.inference and (folder := stage.overlays(r, selected)):
            artifacts["overlays"] = folder
        registration = None
        if stages.registry and "onnx" in artifacts:
            champion = stage.champion(r, evaluation)
            card = stage.card(r, selected, evaluation, conversions, lineage, champion)
            registration = stage.register_version(r, card, conversions)
        stage.summary(r, selected, evaluation, conversions, artifacts, registration)
    return {"checkpoint": selected.checkpoint, "mlflow_run_id": r.run, "tracking_uri": tracking.shown(r.uri),
            "chosen": {k: v for k, v in asdict(selected).items() if k != "trials"},
            "trials": [asdict(t) for t in selected.trials], "metrics": evaluation.metrics if evaluation else {},
            "engines": {c.kind.removeprefix("engine_"): c.report for c in conversions if c.kind.startswith("engine_")},
            "artifacts": artifacts, "registered": asdict(registration) if registration else None}


def main(argv: list[str] | None = None) -> dict:
    """Run the pipeline locally on Prefect's ephemeral API and print where to look at the result."""
    import argparse

    from oneformer.spec import parse_override

    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__)
    p.add_argument("--spec", help="experiment spec YAML")
    p.add_argument("--arch", choices=ARCHS, help=ARCH_HELP)
    p.add_argument("--trials", type=int, help="AutoML trial budget")
    p.add_argument("--no-automl", action="store_true", help="train once with the spec's values")
    p.add_argument("--results-dir")
    p.add_argument("--resume", action="store_true", help="continue the last unfinished run in the results folder")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite in the results folder)")
    for source in ("train", "eval", "inference", "calibration"):
        p.add_argument(f"--{source}", help=f"{source} data URI (s3://..., file://... or a folder)")
    p.add_argument("overrides", nargs="*", help="dotted key=value spec overrides")
    a = p.parse_args(argv)
    overrides = dict(parse_override(o) for o in a.overrides)
    refuse_secrets({"overrides": overrides, "tracking_config": {"tracking_uri": a.mlflow_uri},  # before Prefect
                    "sources": {"train": a.train, "eval": a.eval, "inference": a.inference,  # stores them
                                "calibration": a.calibration}})
    result = pipeline(spec=a.spec, arch=a.arch, overrides=overrides,
                      sources=DataSources(train=a.train, eval=a.eval, inference=a.inference,
                                          calibration=a.calibration),
                      automl_policy=not a.no_automl, n_trials=a.trials, results_dir=a.results_dir,
                      tracking_config=Tracking(tracking_uri=a.mlflow_uri), resume=a.resume)
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
             f"  chosen: trial {result['chosen']['trial']} -> {result['checkpoint']}"]
    if reg and not reg.get("new", True):
        lines.append(f"  {reg['verdict']} -> {reg['model_uri']}")
    elif reg:
        lines.append(f"  registered: {reg['name']} v{reg['version']} ({', '.join(reg['aliases'])}) -> "
                     f"{reg['model_uri']}")
        lines.append(f"  champion gate: {reg['verdict']}")
    lines += [f"  {k}: {v}" for k, v in result["artifacts"].items()]
    lines += ["", "Open the MLflow UI:",
              f"  {bin_dir}/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000",
              "  then http://127.0.0.1:5000",
              "Open the Prefect UI (runs from the local ephemeral API):",
              f"  {prefix}{bin_dir}/prefect server start --host 127.0.0.1 --port 4200",
              "  then http://127.0.0.1:4200", "=" * 72]
    return "\n".join(lines)


if __name__ == "__main__":
    from flows.common import user_errors

    with user_errors():
        main()
