"""The work-pool templates are valid and every placeholder they use is a declared variable; prefect.yaml's
deployments set flat parameters their flows take."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from prefect import Flow

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = ("train", "evaluate", "inference", "export", "quantize", "gen-trt-engine")


@pytest.mark.parametrize("name", ["docker.json", "kubernetes.json"])
def test_base_job_template_placeholders_are_declared(name: str) -> None:
    template = json.loads((ROOT / "deployments" / name).read_text())
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used and used <= declared, used - declared
    env = template["variables"]["properties"]["env"]["default"]
    assert "MLFLOW_TRACKING_URI" in env and not any("SECRET" in k for k in env)


def test_prefect_yaml_deploys_every_flow_and_the_nightly_schedule() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    entry = {d["name"]: d["entrypoint"] for d in config["deployments"]}
    for flow_file, func in [e.split(":") for e in entry.values()]:
        assert f"def {func}(" in (ROOT / flow_file).read_text()
    assert {"nightly", "on-demand", "train", "evaluate", "inference", "export", "quantize",
            "gen-trt-engine"} == set(entry)
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    limit = ConcurrencyLimitConfig(**nightly["concurrency_limit"])  # as `prefect deploy` reads it
    assert (limit.limit, limit.collision_strategy) == (1, ConcurrencyLimitStrategy.CANCEL_NEW)


def load_flow(entrypoint: str) -> Flow:
    """The flow an entrypoint names (`flows/train.py:train_flow`), imported as the worker does."""
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def resolved(value: Any) -> Any:
    """prefect.yaml values with their `{{ $VAR }}` placeholders filled, as `prefect deploy` does."""
    if isinstance(value, dict):
        return {k: resolved(v) for k, v in value.items()}
    return re.sub(r"{{\s*\$(\w+)\s*}}", lambda m: f"/env/{m[1]}", value) if isinstance(value, str) else value


def test_action_flows_take_the_flat_parameters_prefect_yaml_sets() -> None:
    from flows.params import ActionInputs

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    shared = set(ActionInputs.model_fields)
    shape = lambda p: {k: v for k, v in p.items() if k not in ("description", "title", "position")}  # noqa: E731
    pipeline = load_flow(deployments["on-demand"]["entrypoint"]).parameters.properties
    for name in ACTIONS:
        flow = load_flow(deployments[name]["entrypoint"])
        schema = flow.parameters
        props = schema.properties
        assert "inputs" not in props and shared <= set(props), (name, list(props))
        assert set(deployments[name]["parameters"]) <= shared, name
        assert {k: shape(props[k]) for k in shared} == {k: shape(pipeline[k]) for k in shared}, name  # one type each
        assert all(p.get("description") for p in props.values()), (name, props)  # the UI form explains every field
        own = {"parent": "0123456789abcdef0123456789abcdef"} if "parent" in schema.required else {}
        flow.validate_parameters({**resolved(deployments[name]["parameters"]), **own})
        assert callable(flow.flow_run_name), name
    assert set(deployments["train"]["parameters"]) == {"spec", "results_dir", "sources"}
