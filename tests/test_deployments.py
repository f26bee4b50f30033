"""The work-pool templates are valid and every placeholder they use is a declared variable; prefect.yaml's
deployments set flat parameters their flows take."""

from __future__ import annotations

import importlib
import json
import re
import uuid
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
            "gen-trt-engine", "trial"} == set(entry)
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


CONTAINER_POOLS = [(f"{kind}-docker", "docker.json", "prefect_docker.worker", "DockerWorker") for kind in
                   ("nightly", "trial")] + \
                  [(f"{kind}-kubernetes", "kubernetes.json", "prefect_kubernetes.worker", "KubernetesWorker")
                   for kind in ("nightly", "trial")]


@pytest.mark.parametrize(("name", "pool", "module", "worker"), CONTAINER_POOLS)
def test_container_deployment_renders_on_its_work_pool(name: str, pool: str, module: str, worker: str,
                                                      prefect_api: None) -> None:
    """deployments/containers.yaml builds an image of this checkout, pushes what it built and runs the flow from the
    image's WORKDIR; the pool's job template has every setting its worker's own template has, takes the deployment's
    job variables, and renders (through the worker's job configuration class) to a job running that image."""
    import asyncio

    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.schema_tools.validation import validate

    config = yaml.safe_load((ROOT / "deployments" / "containers.yaml").read_text())
    deployment = next(d for d in config["deployments"] if d["name"] == name)
    flow_file, func = deployment["entrypoint"].split(":")
    assert f"def {func}(" in (ROOT / flow_file).read_text()
    (build,) = deployment["build"]
    step = build["prefect_docker.deployments.steps.build_docker_image"]
    dockerfile = (ROOT / step["dockerfile"]).read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.MULTILINE)[1]
    assert deployment["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": workdir}}]
    (push,) = deployment["push"]
    assert push["prefect_docker.deployments.steps.push_docker_image"]["image_name"] == \
        f"{{{{ {step['id']}.image_name }}}}"
    assert "-c constraints.txt" in dockerfile and "COPY flows ./flows" in dockerfile
    if "cuda" in step["dockerfile"]:
        assert "tensorrt" in dockerfile.lower()

    template = json.loads((ROOT / "deployments" / pool).read_text())
    cls = getattr(importlib.import_module(module), worker)
    assert set(cls.get_default_base_job_template()["job_configuration"]) <= set(template["job_configuration"])
    image = f"registry.example.com/team/oneformer-pipeline:{step['tag']}"  # what the build step outputs
    variables = {k: image if v == f"{{{{ {step['id']}.image }}}}" else v
                 for k, v in deployment["work_pool"]["job_variables"].items()}
    validate(variables, template["variables"], raise_on_error=True)
    job = asyncio.run(cls.job_configuration.from_template_and_values(template, variables))
    if worker == "DockerWorker":
        assert job.image == image
        return
    job.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly"))
    container = job.job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == image and container["workingDir"] == workdir
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in container["env"]}
    assert {"WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "PREFECT__FLOW_RUN_ID"} <= set(env)
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert job.job_manifest["spec"]["completionMode"] == "Indexed" and job.job_manifest["spec"]["completions"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", ["docker/cpu.Dockerfile"])
def test_the_image_builds_where_a_container_engine_runs(dockerfile: str) -> None:
    """The CPU image builds and its `oneformer` answers; skipped, saying why, where no Docker daemon is reachable
    (this CI machine has the docker client but no daemon). The CUDA image needs NVIDIA's registry and is built
    where that is reachable."""
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker daemon reachable (docker info failed): the image cannot be built here")
    tag = "oneformer-pipeline:test"
    subprocess.run(["docker", "build", "-f", dockerfile, "-t", tag, "."], cwd=ROOT, check=True, timeout=3600)
    out = subprocess.run(["docker", "run", "--rm", tag, "oneformer", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "gen_trt_engine" in out.stdout
