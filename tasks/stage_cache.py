"""Stage caching: a stage's result is reused while its inputs (the spec sections it reads, its data, the model file it
converts) are unchanged and the files it wrote are still there, so a rerun redoes only what failed and what follows.

Prefect's task cache does the keying and the persisted results; what it cannot know is whether the files a cached
result names were since deleted or rewritten, so every result records its output files' digests and a result whose
files changed is recomputed (`refresh_cache`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import Task

from oneformer.actions import TABLE
from oneformer.artifacts import sha256
from oneformer.data.staging import fingerprint
from oneformer.spec import ExperimentSpec

OUTPUTS = "_outputs"  # the key a cached result keeps its output files' digests under
_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file, remembered while its size and mtime stay the same (checkpoints are hashed once a run)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256(p)
    return _digests[key]


def data_digest(spec: ExperimentSpec, action: str) -> str:
    """A digest of every data file or folder `action` reads, as the spec names them after staging."""
    parts = {}
    for i in TABLE[action].inputs:
        value = spec.value_at(i.key)
        if value and Path(str(value)).exists():
            parts[i.key] = fingerprint(str(value))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def stage_key(action: str, model_params: tuple[str, ...]) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A cache key over the spec sections `action` reads, its data, and the content of its model-file parameters."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        spec: ExperimentSpec = parameters["spec"]
        dump = spec.model_dump(mode="json")
        parts = {"task": context.task.name, "action": action, "data": data_digest(spec, action),
                 "spec": {k: dump.get(k) for k in ("results_dir", "dataset", "model", *TABLE[action].sections)},
                 "models": {p: file_digest(parameters[p]) for p in model_params if Path(parameters[p]).is_file()},
                 "other": {k: v for k, v in parameters.items() if k != "spec" and k not in model_params}}
        return f"{action}-" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    return key


def with_outputs(result: dict, files: list[str | Path]) -> dict:
    """The result with the digests of the files it wrote, so a cached copy can be checked against the disk."""
    return {**result, OUTPUTS: {str(f): file_digest(f) for f in files}}


def intact(result: dict) -> bool:
    """Whether every file a result names still exists with the content it had."""
    try:
        return all(Path(f).is_file() and file_digest(f) == d for f, d in result.get(OUTPUTS, {}).items())
    except OSError:
        return False


def cached(task: Task, results: Path, action: str, model_params: tuple[str, ...]) -> Callable[..., dict]:
    """`task` with its result persisted under <results>/.cache/stages and keyed on its inputs; a cached result whose
    files are gone or changed is computed again."""
    storage = (results / ".cache" / "stages").resolve()  # a Path: Prefect stores results there, no block to save
    keyed = task.with_options(cache_policy=CachePolicy.from_cache_key_fn(stage_key(action, model_params)),
                              persist_result=True, result_storage=storage)  # a policy: the task's NO_CACHE replaced

    def run(**kwargs: Any) -> dict:
        result = keyed(**kwargs)
        if not intact(result):
            get_run_logger().info("%s: the cached result's files changed on disk; computing it again", action)
            result = keyed.with_options(refresh_cache=True)(**kwargs)
        return {k: v for k, v in result.items() if k != OUTPUTS}

    return run
