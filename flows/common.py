"""What every action flow shares: the spec with staged data, one MLflow run, and a closing Prefect artifact."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact

from flows.params import ActionInputs
from oneformer.spec import ExperimentSpec, dump_spec, load_spec
from tasks import tracking
from tasks.actions import with_values
from tasks.staging import load_s3_secret, stage_data


def pipeline_spec(spec: str | None, overrides: dict[str, Any], results_dir: str | None, model_name: str | None,
                  n_trials: int | None) -> ExperimentSpec:
    """The spec file with the overrides and the flow's own parameters applied."""
    for name, value in (("spec", spec), ("results_dir", results_dir)):
        if value and "{{" in value:
            raise ValueError(f"parameter {name}={value!r} holds an unresolved prefect.yaml placeholder: set the "
                             f"environment variable it names before `prefect deploy`, or pass {name} to the run")
    values = dict(overrides)
    for key, value in (("results_dir", results_dir), ("model_name", model_name), ("automl.n_trials", n_trials)):
        if value is not None:
            values[key] = value
    return load_spec(spec, values)


@dataclass
class ActionRun:
    """One action flow's resolved spec, results folder and MLflow run."""

    spec: ExperimentSpec
    results: Path
    uri: str
    client: MlflowClient
    experiment: str
    run: str
    outputs: dict[str, Any] = field(default_factory=dict)


@contextmanager
def action_run(action: str, parent: str | None, inputs: ActionInputs) -> Iterator[ActionRun]:
    """Stage the action's data, open an MLflow run tagged with the parent, and close it FINISHED or FAILED."""
    logger = get_run_logger()
    load_s3_secret(inputs.s3_secret_block)
    base = pipeline_spec(inputs.spec, inputs.overrides, inputs.results_dir, None, None)
    results = Path(base.results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    resolved = with_values(base, {**stage_data(action, inputs.sources), "results_dir": str(results)})
    spec_file = results / f"{action}.spec.yaml"
    spec_file.write_text(dump_spec(resolved))
    uri = tracking.tracking_uri(inputs.tracking_config.tracking_uri, results)
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, inputs.tracking_config.experiment, results / "mlartifacts")
    run = tracking.start_run(c, exp, f"{action}-{runtime.flow_run.name or 'local'}", tags={
        "action": action, "parent": parent or "", "prefect.flow_run_id": str(runtime.flow_run.id or "local")})
    tracking.log_spec(c, run, resolved, spec_file)
    logger.info("MLflow run %s in %s", run, uri)
    ctx = ActionRun(resolved, results, uri, c, exp, run)
    try:
        yield ctx
    except BaseException:
        c.set_terminated(run, "FAILED")
        raise
    metrics = {k: v for k, v in ctx.outputs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    tracking.log_metrics(c, run, metrics)
    lines = [f"# oneformer {action}", "", f"parent: `{parent}`", "", "| output | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | `{v}` |" for k, v in ctx.outputs.items()
              if isinstance(v, int | float | str)]
    lines += ["", f"MLflow run: {tracking.run_url(uri, exp, run)} (tracking URI `{uri}`)"]
    create_markdown_artifact(markdown="\n".join(lines), key=f"oneformer-{action.replace('_', '-')}",
                             description=f"oneformer {action} result")
    c.set_terminated(run, "FINISHED")
