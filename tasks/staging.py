"""Stage an action's data from S3/file URIs into the local cache, with retries on transient storage errors."""

from __future__ import annotations

import json
import os

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from oneformer.data.staging import stage_all
from oneformer.errors import OneFormerError
from tasks.sources import REQUIREMENTS, DataSources, required

# Environment variables that configure S3 access; a Prefect Secret block may supply them instead.
S3_ENV = {"endpoint_url": "AWS_ENDPOINT_URL_S3", "region": "AWS_DEFAULT_REGION",
          "access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY",
          "session_token": "AWS_SESSION_TOKEN"}


def load_s3_secret(block: str | None) -> list[str]:
    """Fill unset S3 environment variables from a Secret block holding JSON; returns the names it set."""
    if not block:
        return []
    from prefect.blocks.system import Secret

    value = Secret.load(block).get()
    settings = json.loads(value) if isinstance(value, str) else dict(value)
    unknown = sorted(set(settings) - set(S3_ENV))
    if unknown:
        raise ValueError(f"Secret block {block!r}: unknown keys {unknown}; expected some of {sorted(S3_ENV)}")
    filled = []
    for key, env in S3_ENV.items():
        if settings.get(key) and not os.environ.get(env):
            os.environ[env] = str(settings[key])
            filled.append(env)
    return filled


def transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry storage hiccups, never a user mistake (a missing object or a bad archive)."""
    try:
        state.result()
    except OneFormerError:
        return False
    except Exception:  # noqa: BLE001 - anything else from the storage stack is worth another try
        return True
    return False


@task(name="stage-data", task_run_name="stage {action} data", retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
      retry_condition_fn=transient)
def stage_data(action: str, sources: DataSources) -> dict[str, str]:
    """Local paths for every file `action` needs (spec key -> path), staged side by side; unchanged objects reuse
    the staged copy."""
    logger = get_run_logger()
    uris = required(action, sources)
    out = {key: str(path) for key, path in stage_all(uris).items()}
    for key, uri in uris.items():
        logger.info("%s: %s -> %s", key, uri, out[key])
    return out


@task(name="fingerprint-data", task_run_name="fingerprint {action} data", retries=2, retry_delay_seconds=5,
      retry_condition_fn=transient)
def data_digest(action: str, sources: DataSources) -> dict[str, str]:
    """One digest over every file `action` reads from the sources, plus each source's own (for MLflow inputs)."""
    import hashlib

    from oneformer.data.staging import fingerprint

    parts = {key: fingerprint(uri) for key, uri in sorted(required(action, sources).items())}
    out = {"all": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]}
    source_of = {key: source for key, source, _ in REQUIREMENTS[action]}
    for source in ("train", "eval", "inference", "calibration"):
        if mine := [d for k, d in parts.items() if source_of[k] == source]:
            out[source] = hashlib.sha256("|".join(mine).encode()).hexdigest()[:20]
    return out
