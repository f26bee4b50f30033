"""What every flow shares: the spec with its data staged, the results folder, one MLflow run, a closing artifact."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.tasks import Task

from flows.params import ActionInputs, refuse_secrets
from oneformer.arch_spec import TITLES
from oneformer.artifacts import write_json, write_text
from oneformer.errors import CheckpointError, OneFormerError, SpecError
from oneformer.secrets import redact_text, redact_url
from oneformer.spec import (
    ExperimentSpec,
    apply_overrides,
    detect_arch,
    dump_spec,
    load_spec,
    parse_override,
    read_yaml,
    with_values,
)
from tasks import tracking
from tasks.actions import check_data
from tasks.locks import exclusive
from tasks.parents import missing_local, resolve_parent
from tasks.sources import data_overrides
from tasks.stage_cache import cached
from tasks.staging import s3_options, stage_data


class NoUserErrorTraceback(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; for our user errors, whose message names the file,
    key and what to do, the traceback is only noise (in the terminal and the UI alike), so it is left off."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OneFormerError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):  # the loggers Prefect's engines report failures on
    logging.getLogger(_name).addFilter(NoUserErrorTraceback())


def spec_from(inputs: ActionInputs) -> ExperimentSpec:
    """The spec file with the overrides and the results folder applied; a prefect.yaml placeholder that was never
    filled in is a clear error."""
    for name, value in (("spec", inputs.spec), ("results_dir", inputs.results_dir)):
        if value and "{{" in value:
            raise ValueError(f"parameter {name}={value!r} holds an unresolved prefect.yaml placeholder: set the "
                             f"environment variable it names before `prefect deploy`, or pass {name} to the run")
    values = dict(inputs.overrides)
    if inputs.results_dir is not None:
        values["results_dir"] = inputs.results_dir
    if inputs.arch:
        refuse_other_network(inputs.spec, values, inputs.arch)
    return load_spec(inputs.spec, values, inputs.arch)


def refuse_other_network(path: str | None, values: dict[str, Any], arch: str) -> None:
    """The flow's `arch` and the spec must name the same network: a spec that says (model.arch) or shows
    (SegFormer's dataset.segment, Mask2Former's model.mask_former) another one is refused, naming both."""
    raw = apply_overrides(read_yaml(path) if path else {}, values)
    named = (raw.get("model") or {}).get("arch") if isinstance(raw.get("model"), dict) else None
    shown_as = named or detect_arch(raw)
    if shown_as != arch and (named or shown_as != "oneformer"):  # oneformer is only the fallback of the shape
        why = f"model.arch: {named}" if named else "its keys"
        raise SpecError([f"parameter arch={arch!r} but the spec is a {TITLES.get(shown_as, shown_as)} spec ({why}): "
                         f"run it with arch={shown_as!r}, or give a {TITLES[arch]} spec (`{arch} default_specs` "
                         f"writes one)"], path or "the embedded defaults")


@dataclass
class TrackedRun:
    """A flow's resolved spec (data staged), results folder, MLflow run, and the outputs it reports at the end."""

    spec: ExperimentSpec
    inputs: ActionInputs
    results: Path
    uri: str
    client: MlflowClient
    experiment: str
    run: str
    flow_run_id: str
    run_key: str = ""  # trials of this key count toward n_trials: the flow run's id, or a resumed run's
    outputs: dict[str, Any] = field(default_factory=dict)

    def log_files(self, files: list[str | Path], folder: str) -> list[str]:
        """Existing files as artifacts of this run."""
        return tracking.log_files(self.client, self.run, files, folder)

    def log_metrics(self, metrics: dict[str, Any], prefix: str = "") -> None:
        """Numeric entries as metrics of this run."""
        tracking.log_metrics(self.client, self.run, metrics, prefix)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Tags on this run."""
        tracking.set_tags(self.client, self.run, tags)

    def parent_file(self, parent: str, kind: str) -> str:
        """A local file of the parent's (checkpoint, onnx or int8), downloaded into this run's results folder."""
        return resolve_parent(parent, kind, self.uri, str(self.results / "parent"), self.inputs.s3_secret_block)

    def cached(self, task: Task, action: str, model_params: tuple[str, ...]) -> Callable[..., dict]:
        """`task` cached on its inputs under this run's results folder (see tasks.stage_cache)."""
        return cached(task, self.results, action, model_params)

    def staged(self, action: str) -> ExperimentSpec:
        """This run's spec with the files `action` reads staged to local paths."""
        given = data_overrides(self.inputs.overrides, action)
        return with_values(self.spec, stage_data(action, self.inputs.sources, self.inputs.s3_secret_block, self.spec,
                                                 given), f"{action} spec")

    @property
    def url(self) -> str:
        """Where to open the run."""
        return tracking.run_url(self.uri, self.experiment, self.run)


RUN_RECORD = "pipeline_run.json"  # the last run in a results folder: its key and how it ended (for resume)
ACTIVE: dict[str, TrackedRun] = {}  # flow run id -> its tracked run, for the failure hooks
SEEN: set[str] = set()  # flow runs that entered tracked_run in this process (the others' hooks run elsewhere)


def run_key(results: Path, resume: bool, flow_run_id: str) -> str:
    """This run's key: a resumed run takes the key of the last run in the folder if that one did not finish."""
    record = json.loads((results / RUN_RECORD).read_text()) if (results / RUN_RECORD).is_file() else {}
    if resume and record.get("state") not in (None, "COMPLETED"):
        get_run_logger().info("resuming run %s (it ended %s): its finished trials and stages are reused",
                              record["run_key"], record["state"])
        return str(record["run_key"])
    if resume:
        get_run_logger().info("resume: the last run in %s finished (or none ran); starting a new one", results)
    return flow_run_id


def flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI, when a server is configured."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    ui = PREFECT_UI_URL.value() or (str(PREFECT_API_URL.value() or "").removesuffix("/api") or None)
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui and flow_run_id != "local" else None


@contextmanager
def tracked_run(name: str, inputs: ActionInputs, stage: str, spec_file: str,
                tags: dict[str, str] | None = None, resume: bool = False) -> Iterator[TrackedRun]:
    """Stage `stage`'s data, check it, write the resolved spec, open an MLflow run (closed FINISHED, or FAILED on
    error), all while holding the results folder against other runs."""
    logger = get_run_logger()
    SEEN.add(str(runtime.flow_run.id or "local"))
    refuse_secrets(inputs.model_dump(mode="json"))  # before anything is written or logged
    base = spec_from(inputs)
    s3_options(inputs.s3_secret_block)  # a missing or malformed block fails here, once, not in every retry
    results = Path(base.results_dir).resolve()
    with exclusive("results folder", str(results)):
        staged = stage_data(stage, inputs.sources, inputs.s3_secret_block, base,
                            data_overrides(inputs.overrides, stage))
        spec = with_values(base, {**staged, "results_dir": str(results)}, f"{name} spec")
        check_data(spec, stage)  # bad input fails here: no results folder, no MLflow run
        results.mkdir(parents=True, exist_ok=True)
        path = write_text(results / spec_file, dump_spec(spec))
        uri = tracking.tracking_uri(inputs.tracking_config.tracking_uri, results)
        c = tracking.client(uri)
        exp = tracking.experiment_id(c, inputs.tracking_config.experiment, tracking.artifact_root(uri, results))
        flow_run_id = str(runtime.flow_run.id or "local")
        key = run_key(results, resume, flow_run_id)
        if key != flow_run_id and (dead := json.loads((results / RUN_RECORD).read_text()).get("mlflow_run")):
            try:  # the resumed attempt's run, left RUNNING by a killed process
                tracking.end_if_running(c, dead, "FAILED")
            except Exception as exc:  # noqa: BLE001 - in another store (the tracking URI changed): it stays as it is
                logger.warning("could not end the resumed attempt's MLflow run %s: %s", dead, exc)
        link = {"prefect.flow_run_url": url} if (url := flow_run_url(flow_run_id)) else {}
        run_name = runtime.flow_run.name or "local"
        run = tracking.start_run(c, exp, run_name if run_name.startswith(f"{name}-") else f"{name}-{run_name}",
                                 tags={"prefect.flow_run_id": flow_run_id, "run_key": key, **link, **(tags or {})})
        logger.info("MLflow run %s in %s", run, tracking.shown(uri))
        r = TrackedRun(spec, inputs, results, uri, c, exp, run, flow_run_id, key)
        if name == "pipeline":
            write_json(results / RUN_RECORD, {"run_key": key, "flow_run_id": flow_run_id, "mlflow_run": run,
                                              "state": "RUNNING"})
        ACTIVE[flow_run_id] = r
        try:
            tracking.log_spec(c, run, spec, path)
            create_link_artifact(r.url, link_text="MLflow run", key=f"{name.replace('_', '-')}-mlflow-run",
                                 description=f"The MLflow run of this {name} flow run")
            yield r
        except BaseException as exc:
            c.set_terminated(run, "FAILED")
            if name == "pipeline":
                write_json(results / RUN_RECORD, {"run_key": key, "flow_run_id": flow_run_id, "mlflow_run": run,
                                                  "state": "FAILED",
                                                  "error": redact_text(f"{type(exc).__name__}: {exc}")[:2000]})
            raise
        c.set_terminated(run, "FINISHED")
        if name == "pipeline":
            write_json(results / RUN_RECORD, {"run_key": key, "flow_run_id": flow_run_id, "mlflow_run": run,
                                              "state": "COMPLETED"})
        ACTIVE.pop(flow_run_id, None)


def orphaned_run(flow_run: Any) -> TrackedRun | None:
    """The MLflow run of a flow run whose process is gone (killed, or cancelled by its worker, which then runs the
    hooks in its own process): found again from the flow run's parameters and its `prefect.flow_run_id` tag."""
    params = flow_run.parameters or {}
    inputs = ActionInputs(**{k: params[k] for k in ActionInputs.model_fields if params.get(k) is not None})
    spec = spec_from(inputs)
    results = Path(spec.results_dir).resolve()
    if not results.is_dir():  # it ended before it wrote anything
        return None
    uri = tracking.tracking_uri(inputs.tracking_config.tracking_uri, results)
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(inputs.tracking_config.experiment)
    if exp is None:
        return None
    found = c.search_runs([exp.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run.id}'", max_results=1)
    if not found:
        return None
    run = found[0]
    return TrackedRun(spec, inputs, results, uri, c, exp.experiment_id, run.info.run_id, str(flow_run.id),
                      run.data.tags.get("run_key", ""))


def on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow failure/crash/cancellation hook: the MLflow run is marked FAILED (KILLED when cancelled), the failure goes
    into the run's summary, and a pipeline's run record says how it ended (so `resume` continues it)."""
    r = ACTIVE.pop(str(flow_run.id), None)
    if r is None and not state.is_failed() and str(flow_run.id) not in SEEN:  # a worker's, for a process gone
        try:
            r = orphaned_run(flow_run)
        except Exception as exc:  # noqa: BLE001 - a spec or store the worker cannot reach: the flow run's state stands
            logging.getLogger(__name__).warning("could not find the MLflow run of flow run %s to mark it ended: %s",
                                                flow_run.id, redact_text(str(exc)))
    if r is None:  # it failed before its MLflow run opened: nothing to record there
        return
    message = redact_text(state.message or state.name)
    try:
        tracking.end_if_running(r.client, r.run, "KILLED" if state.is_cancelled() else "FAILED")
        record = r.results / RUN_RECORD
        if record.is_file() and (was := json.loads(record.read_text())).get("flow_run_id") == str(flow_run.id) \
                and was.get("state") == "RUNNING":
            write_json(record, {**was, "state": state.type.value, "error": message[:2000]})
        text = "\n".join([f"# {flow.name}: {state.name}", "", f"**Error:** {message}", "",
                          f"MLflow run: {r.url} (tracking URI `{tracking.shown(r.uri)}`)"])
        r.log_files([write_text(r.results / "summary.md", text)], "")
        r.set_tags({"failure": message[:5000]})
        if str(flow_run.id) in SEEN:  # a worker's hook runs outside any flow run: an artifact would belong to none
            create_markdown_artifact(markdown=text, key=f"{flow.name}-summary", description=f"{flow.name} failed")
    except Exception:
        logging.getLogger(__name__).exception("could not record the failure of flow run %s", flow_run.id)


def end_trials(flow: Any, flow_run: Any, state: Any) -> None:
    """Study flow cancellation/crash/failure hook: the trial flow runs it launched on workers end too, their Optuna
    trials failed, so no worker goes on training for a run nobody waits for (Prefect's worker runs this hook after
    it killed a cancelled or crashed flow run's process)."""
    from tasks.abandon import abandon_trials

    why = f"the study flow run {flow_run.name} ({flow_run.id}) was {state.name.lower()}: nobody waits for this trial"
    try:
        if ended := abandon_trials(flow_run.id, why):
            logging.getLogger(__name__).warning("%s: cancelled trial flow runs %s", why, ", ".join(ended))
    except Exception:
        logging.getLogger(__name__).exception("could not end the trial flow runs of flow run %s", flow_run.id)


@contextmanager
def action_run(action: str, parent: str | None, inputs: ActionInputs) -> Iterator[TrackedRun]:
    """An action flow's run: tagged with its parent, closed with a markdown artifact of its outputs."""
    refuse_secrets({"parent": parent})
    if problem := missing_local(parent):
        raise CheckpointError(problem)
    with tracked_run(action, inputs, action, f"{action}.spec.yaml", {"action": action, "parent": parent or ""}) as r:
        yield r
        r.log_metrics({k: v for k, v in r.outputs.items() if isinstance(v, int | float) and not isinstance(v, bool)})
        lines = [f"# oneformer {action}", "", f"parent: `{parent}`", "", "| output | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | `{v}` |"
                  for k, v in r.outputs.items() if isinstance(v, int | float | str)]
        lines += ["", f"MLflow run: {r.url} (tracking URI `{tracking.shown(r.uri)}`)"]
        create_markdown_artifact(markdown="\n".join(lines), key=f"oneformer-{action.replace('_', '-')}",
                                 description=f"oneformer {action} result")


def run_name(action: str) -> Callable[[], str]:
    """An action flow's `flow_run_name`: `<action>-<parent, short>-<UTC minute>` (the spec's name when there is no
    parent), so runs are told apart in the Prefect and MLflow UIs instead of by two random words."""

    def name() -> str:
        params = runtime.flow_run.parameters
        parent = redact_url(str(params.get("parent") or ""))  # a refused parent's password is not in the name
        if re.fullmatch(r"[0-9a-f]{32}", parent):  # an MLflow run id
            short = parent[:8]
        elif parent.startswith("models:/"):
            short = parent.removeprefix("models:/").replace("/", "-")
        elif parent:
            short = PurePosixPath(parent).stem
        else:
            short = PurePosixPath(str(params.get("spec") or "defaults")).stem
        return f"{action}-{short}-{datetime.now(UTC):%Y%m%d-%H%M}"

    return name


def run_from_argv(flow: Callable[..., Any], with_parent: bool = True) -> None:
    """`python -m flows.<action> [PARENT] [SPEC] [key=value ...]`: run an action flow locally and print its result."""
    args = sys.argv[1:]
    usage = (f"usage: python -m flows.{Path(sys.argv[0]).stem} {'PARENT ' if with_parent else ''}[--arch=NETWORK] "
             "[SPEC] [key=value ...]")
    if with_parent and (not args or "=" in args[0]):
        sys.exit(usage)
    own = {"parent": args.pop(0)} if with_parent else {}
    arch = next((a.split("=", 1)[1] for a in args if a.startswith("--arch=")), None)
    args = [a for a in args if not a.startswith("--arch=")]
    spec = args.pop(0) if args and "=" not in args[0] else None
    overrides = dict(parse_override(a) for a in args)
    refuse_secrets({**own, "overrides": overrides})  # before Prefect stores them with the flow run
    with user_errors():
        print(flow(**own, spec=spec, arch=arch, overrides=overrides))


@contextmanager
def user_errors() -> Iterator[None]:
    """A local flow run's user errors (bad input, a busy folder) as `error: ...` and exit code 2, as the oneformer
    CLI gives them, instead of the flow engine's traceback (Prefect's run log keeps that)."""
    try:
        yield
    except OneFormerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
