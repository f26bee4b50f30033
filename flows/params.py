"""Typed flow parameters: the Prefect UI renders these as a form with defaults and bounds."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from oneformer.arch_spec import Arch
from oneformer.secrets import SECRET_KEYS, redact, secrets_in
from tasks.sources import DataSources


class Stages(BaseModel):
    """Which stages run after training and checkpoint selection."""

    model_config = ConfigDict(extra="forbid")

    evaluate: bool = Field(True, description="Score the selected checkpoint on the test split and log its metrics "
                                             "and per-class IoU")
    export: bool = Field(True, description="ONNX export of the selected checkpoint with its parity check (also runs "
                                           "when quantize is on, which needs it)")
    quantize: bool = Field(True, description="INT8 QDQ model of the exported ONNX file, with its accuracy gate")
    gen_trt_engine: bool = Field(True, description="Skipped with a clear line where TensorRT or CUDA is missing")
    inference: bool = Field(True, description="Overlays of the inference set (needs sources.inference or the spec)")
    registry: bool = Field(True, description="Register the model version in MLflow and move its aliases")


class Tracking(BaseModel):
    """Where MLflow records runs and models (defaults: SQLite and a folder inside results_dir)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(None, description="Default: MLFLOW_TRACKING_URI, else sqlite in results_dir")
    experiment: str = Field("oneformer", min_length=1, description="MLflow experiment the runs are recorded in "
                                                                   "(created if missing)")


S3_BLOCK = ("Prefect block with the S3 credentials: `aws-credentials/<name>` (prefect-aws AwsCredentials) or the "
            "name of a Secret block holding JSON")
TrtPrecision = Literal["fp32", "fp16", "int8"]
ARCH_HELP = ("The network: oneformer, mask2former or segformer (default: the spec's model.arch); a spec of another "
             "network is refused")
# Where each kind of secret goes instead of a flow parameter (Prefect stores parameters as given: database, UI).
WHERE_SECRETS_GO = (
    "Prefect stores flow parameters as given (its database, the UI), so a secret never comes in as one. Keep the "
    "password out of the URL (postgresql://user@host:5432/db) and set PGPASSWORD in the worker's environment "
    "(libpq and psycopg read it: Optuna's study storage and MLflow's PostgreSQL store), or put the whole URL in a "
    "spec file on the worker (the `spec` parameter names the file); give MLflow's URI and credentials as "
    "MLFLOW_TRACKING_URI / MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in the worker's environment; S3 keys "
    "as an AwsCredentials or Secret block named by s3_secret_block (or AWS_* in the worker's environment); "
    f"{' and '.join(sorted(SECRET_KEYS))} in the spec file; any other secret in a Prefect Secret block.")


class SecretParameterError(ValueError):
    """A flow parameter holds a secret; refused before anything is written, logged or connected to."""


def refuse_secrets(parameters: dict[str, Any]) -> None:
    """Refuse parameters that hold a secret (a URL with a password, encryption_key); a flow run that got one has its
    stored parameters overwritten with the masked values first, so the secret leaves Prefect's database too."""
    found = secrets_in(parameters)
    if not found:
        return
    _scrub_flow_run_parameters()
    raise SecretParameterError(f"parameter {', '.join(found)} holds a secret (a password in a URL, or "
                               f"{'/'.join(sorted(SECRET_KEYS))}); refused. {WHERE_SECRETS_GO}")


def _scrub_flow_run_parameters() -> None:
    """Overwrite this flow run's parameters in the API with their masked copies (nothing outside a flow run)."""
    from prefect import runtime
    from prefect.client.orchestration import get_client

    if not runtime.flow_run.id:
        return
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(runtime.flow_run.id).parameters
        client.update_flow_run(runtime.flow_run.id, parameters=redact(stored))


# The parameters every action flow shares: which model it starts from, and which file of it.
Parent = Annotated[str, Field(description="MLflow run id, models:/<name>@<alias> or models:/<name>/<version>, "
                                          "or a path")]
ModelKind = Annotated[Literal["checkpoint", "onnx", "int8"], Field(description="Which file of the parent")]


class ActionInputs(BaseModel):
    """What every action flow reads besides its own parameters: the spec, the data, where results and runs go.
    Defined once here; `flat_inputs` turns each field into a flat flow parameter of every action flow."""

    model_config = ConfigDict(extra="forbid")

    spec: str | None = Field(None, description="Experiment spec YAML (TAO keys); embedded defaults when empty")
    arch: Arch | None = Field(None, description=ARCH_HELP)
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted spec keys, e.g. evaluate.batch_size")
    sources: DataSources = Field(default_factory=DataSources, description="Dataset URIs in TAO's bucket layout")
    results_dir: str | None = Field(None, description="Default: the spec's results_dir")
    tracking_config: Tracking = Field(default_factory=Tracking, description="MLflow tracking URI and experiment")
    s3_secret_block: str | None = Field(None, description=S3_BLOCK)


R = TypeVar("R")


def flat_inputs(fn: Callable[..., R]) -> Callable[..., R]:
    """`fn`'s keyword `inputs: ActionInputs` exposed as one keyword parameter per ActionInputs field (typed, described,
    with its default), so a deployment run that sets one (`--param overrides=...`) keeps the deployment's others."""
    own = inspect.signature(fn, eval_str=True)
    if "inputs" not in own.parameters:
        raise TypeError(f"{fn.__qualname__} takes no `inputs: ActionInputs` parameter to flatten")
    fields = ActionInputs.model_fields
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.get_default(call_default_factory=True),
                                annotation=Annotated[(f.annotation, *f.metadata, Field(description=f.description))])
              for name, f in fields.items()]
    params = [*(p for p in own.parameters.values() if p.name != "inputs"), *shared]
    signature = own.replace(parameters=[p.replace(annotation=_described(p.annotation)) for p in params])

    @functools.wraps(fn)
    def flat(*args: Any, **kwargs: Any) -> R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        inputs = ActionInputs(**{name: values.pop(name) for name in fields})
        return fn(**values, inputs=inputs)

    flat.__signature__ = signature  # type: ignore[attr-defined]  # what Prefect's schema, validation and binding read
    flat.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    if signature.return_annotation is not inspect.Signature.empty:
        flat.__annotations__["return"] = signature.return_annotation
    return flat


def described(fn: Callable[..., R]) -> Callable[..., R]:
    """`fn` with each Annotated Field description kept in the Prefect UI form (see _described)."""
    own = inspect.signature(fn, eval_str=True)
    signature = own.replace(parameters=[p.replace(annotation=_described(p.annotation))
                                        for p in own.parameters.values()])
    fn.__signature__ = signature  # type: ignore[attr-defined]  # what Prefect's parameter schema reads
    fn.__annotations__ = {**{p.name: p.annotation for p in signature.parameters.values()},
                          **({"return": own.return_annotation} if own.return_annotation is not own.empty else {})}
    return fn


def _described(annotation: Any) -> Any:
    """`annotation` with its Field description also in json_schema_extra: Prefect's parameter schema sets
    description=None over an Annotated Field's description, but merges json_schema_extra, so the UI form keeps it."""
    if get_origin(annotation) is not Annotated:
        return annotation
    texts = [m.description for m in annotation.__metadata__ if isinstance(m, FieldInfo) and m.description]
    return Annotated[annotation, Field(json_schema_extra={"description": texts[-1]})] if texts else annotation
