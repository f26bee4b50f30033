"""Stage an action's data from S3/file URIs into the local cache, with retries on transient storage errors."""

from __future__ import annotations

import hashlib
import json

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from oneformer.actions import TABLE, layout_of
from oneformer.data.staging import fingerprint, is_remote, stage_all
from oneformer.errors import OneFormerError, StorageError
from oneformer.spec import ExperimentSpec
from tasks.sources import DataSources, required

# Keys a Secret block may hold, and where each goes in s3fs's storage options.
S3_SECRET_KEYS = {"endpoint_url": ("client_kwargs", "endpoint_url"), "region": ("client_kwargs", "region_name"),
                  "access_key_id": ("key",), "secret_access_key": ("secret",), "session_token": ("token",)}


AWS_CREDENTIALS = "aws-credentials"  # prefect-aws's block type slug: `aws-credentials/<name>` names one


def s3_options(block: str | None) -> dict:
    """s3fs storage options from a Prefect block ({} without one): `aws-credentials/<name>` (prefect-aws's
    AwsCredentials), else a Secret block holding JSON (`<name>` or `secret/<name>`).

    They go to the staging calls that need them, so the credentials never land in os.environ, where they would
    outlive this flow run and leak into the next flow the same worker process runs.
    """
    if not block:
        return {}
    kind, sep, name = block.partition("/")
    if sep and kind == AWS_CREDENTIALS:
        return aws_options(name)
    if sep and kind != "secret":
        raise ValueError(f"s3_secret_block {block!r}: name an AwsCredentials block as {AWS_CREDENTIALS}/<name>, or a "
                         f"Secret block as <name> or secret/<name>")
    block = name if sep else block
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block).get()
        settings = json.loads(value) if isinstance(value, str) else dict(value)
    except ValueError as exc:  # no such block, or a value that is not a JSON object
        raise ValueError(f"s3_secret_block {block!r}: {exc}; save a Secret block holding JSON with some of "
                         f"{sorted(S3_SECRET_KEYS)}") from None
    unknown = sorted(set(settings) - set(S3_SECRET_KEYS))
    if unknown:
        raise ValueError(f"Secret block {block!r}: unknown keys {unknown}; expected some of {sorted(S3_SECRET_KEYS)}")
    options: dict = {}
    for key, where in S3_SECRET_KEYS.items():
        if settings.get(key):
            target = options.setdefault(where[0], {}) if len(where) == 2 else options
            target[where[-1]] = str(settings[key])
    return options


def aws_options(name: str) -> dict:
    """s3fs storage options from prefect-aws's AwsCredentials block `name`: keys, session token, profile, region,
    and the endpoint and TLS settings of its aws_client_parameters."""
    from prefect_aws import AwsCredentials

    try:
        creds = AwsCredentials.load(name)
    except ValueError as exc:  # no such block
        raise ValueError(f"s3_secret_block {AWS_CREDENTIALS}/{name}: {exc}") from None
    if creds.assume_role_arn:
        raise ValueError(f"s3_secret_block {AWS_CREDENTIALS}/{name}: assume_role_arn is not supported for staging; "
                         f"give the block keys (and a session token) or a profile_name")
    secret = creds.aws_secret_access_key.get_secret_value() if creds.aws_secret_access_key else None
    given = {"key": creds.aws_access_key_id, "secret": secret, "token": creds.aws_session_token,
             "profile": creds.profile_name}
    params = creds.aws_client_parameters
    client = {"region_name": creds.region_name, "endpoint_url": params.endpoint_url,
              "verify": str(params.verify_cert_path) if params.verify_cert_path else
              (False if params.verify is False else None), "use_ssl": False if params.use_ssl is False else None}
    options: dict = {k: v for k, v in given.items() if v}
    if client := {k: v for k, v in client.items() if v is not None}:
        options["client_kwargs"] = client
    return options


def transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry storage hiccups, never a user mistake (a missing object or a bad archive)."""
    try:
        state.result()
    except StorageError:  # ours, but the storage's fault: another try may well succeed
        return True
    except OneFormerError:
        return False
    except Exception:  # noqa: BLE001 - anything else from the storage stack is worth another try
        return True
    return False


@task(name="stage-data", task_run_name="stage {action} data", retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
      retry_condition_fn=transient)
def stage_data(action: str, sources: DataSources, s3_secret_block: str | None = None,
               spec: ExperimentSpec | None = None, given: dict[str, str] | None = None) -> dict[str, str]:
    """Local paths for every file `action` needs (spec key -> path), from the sources and from remote URIs the spec
    itself names, staged side by side with the block's S3 settings; unchanged objects reuse the staged copy. A file
    the run's overrides name (`given`) wins over the source's."""
    logger = get_run_logger()
    layout = layout_of(spec) if spec else "oneformer"
    named = {i.key: str(v) for i in TABLE[action].inputs if spec and (v := spec.value_at(i.key)) and is_remote(str(v))}
    uris = {**named, **required(action, sources, given, layout)}
    for key in sorted(set(given or {}) & set(required(action, sources, None, layout))):
        logger.info("%s: the override %s is used instead of the %s source's file", key, uris[key],
                    next(i.source for i in TABLE[action].inputs if i.key == key))
    out = {key: str(path) for key, path in stage_all(uris, options=s3_options(s3_secret_block)).items()}
    for key, uri in uris.items():
        logger.info("%s: %s -> %s", key, uri, out[key])
    return out


@task(name="fingerprint-data", task_run_name="fingerprint {action} data", retries=2, retry_delay_seconds=5,
      retry_condition_fn=transient)
def data_digest(action: str, sources: DataSources, s3_secret_block: str | None = None,
                given: dict[str, str] | None = None, layout: str = "oneformer") -> dict[str, str]:
    """One digest over every file `action` reads from the sources (or the overrides that replace them), plus each
    source's own (for MLflow inputs)."""
    options = s3_options(s3_secret_block)
    parts = {key: fingerprint(uri, options) for key, uri in sorted(required(action, sources, given, layout).items())}
    out = {"all": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]}
    source_of = {i.key: i.source for i in TABLE[action].inputs}
    for source in ("train", "eval", "inference", "calibration"):
        if mine := [d for k, d in parts.items() if source_of[k] == source]:
            out[source] = hashlib.sha256("|".join(mine).encode()).hexdigest()[:20]
    return out
