"""The work-pool templates are valid and every placeholder they use is a declared variable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


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
