"""Action flows take flat parameters (each ActionInputs field is one), are named for their action and parent, and
run from the command line with overrides (seconds: probe flows, no model)."""

from __future__ import annotations

import re
import sys

import pytest
from prefect import flow, runtime

from flows.common import run_from_argv, run_name
from flows.params import ActionInputs, Parent, flat_inputs
from tasks.sources import DataSources


@flow(flow_run_name=run_name("evaluate"))
@flat_inputs
def probe(parent: Parent, repeat: int = 1, *, inputs: ActionInputs) -> dict:
    """What an action flow receives, and the name its run got."""
    return {"parent": parent, "repeat": repeat, "inputs": inputs, "name": runtime.flow_run.name}


def test_flat_parameters_become_one_action_inputs_with_the_defaults_of_the_rest() -> None:
    out = probe("models:/oneformer@champion", overrides={"evaluate.batch_size": 2}, sources={"eval": "s3://b/eval"})
    assert out["parent"] == "models:/oneformer@champion" and out["repeat"] == 1
    assert out["inputs"] == ActionInputs(overrides={"evaluate.batch_size": 2}, sources=DataSources(eval="s3://b/eval"))
    assert list(probe.parameters.properties) == ["parent", "repeat", *ActionInputs.model_fields]
    with pytest.raises(TypeError):  # the shared parameters are keywords only
        probe.fn("p", 1, "spec.yaml")


@pytest.mark.parametrize(("parent", "short"), [
    ("0123456789abcdef0123456789abcdef", "01234567"),  # an MLflow run id
    ("models:/oneformer@champion", "oneformer@champion"),
    ("models:/oneformer/3", "oneformer-3"),
    ("s3://bucket/models/model_epoch_003.pth", "model_epoch_003"),
])
def test_runs_are_named_for_their_action_and_parent(parent: str, short: str) -> None:
    name = probe(parent)["name"]
    assert name.startswith(f"evaluate-{short}-20") and len(name) == len(f"evaluate-{short}-20261121-1530"), name


def test_run_from_argv_takes_parent_spec_and_overrides(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    seen = {}
    monkeypatch.setattr(sys, "argv", ["flows/evaluate.py", "abc", "specs/smoke.yaml", "evaluate.batch_size=2"])
    run_from_argv(lambda **kw: seen.update(kw) or "done")
    assert seen == {"parent": "abc", "spec": "specs/smoke.yaml", "arch": None, "overrides": {"evaluate.batch_size": 2}}
    assert capsys.readouterr().out == "done\n"
    monkeypatch.setattr(sys, "argv", ["flows/train.py", "train.num_epochs=1"])
    run_from_argv(lambda **kw: seen.update(kw, parent=None), with_parent=False)
    assert seen == {"parent": None, "spec": None, "arch": None, "overrides": {"train.num_epochs": 1}}
    monkeypatch.setattr(sys, "argv", ["flows/train.py", "--arch=segformer", "specs/segformer_smoke.yaml"])
    run_from_argv(lambda **kw: seen.update(kw, parent=None), with_parent=False)
    assert seen == {"parent": None, "spec": "specs/segformer_smoke.yaml", "arch": "segformer", "overrides": {}}
    monkeypatch.setattr(sys, "argv", ["flows/evaluate.py"])
    with pytest.raises(SystemExit, match="usage: python -m flows.evaluate PARENT"):
        run_from_argv(lambda **kw: None)


FLOWS = ["flows.pipeline:pipeline", "flows.train:train_flow", "flows.evaluate:evaluate_flow",
         "flows.export:export_flow", "flows.quantize:quantize_flow", "flows.inference:inference_flow",
         "flows.gen_trt_engine:gen_trt_engine_flow"]


@pytest.mark.parametrize("entrypoint", FLOWS)
def test_every_flow_takes_the_network_as_a_choice_in_its_form(entrypoint: str) -> None:
    import importlib

    module, name = entrypoint.split(":")
    schema = getattr(importlib.import_module(module), name).parameters.model_dump()["properties"]["arch"]
    assert schema["anyOf"][0]["enum"] == ["oneformer", "mask2former", "segformer"] and schema["default"] is None
    assert "refused" in schema["description"]


@pytest.mark.parametrize(("spec", "arch", "named"), [
    ("specs/segformer_smoke.yaml", "oneformer", "SegFormer spec (model.arch: segformer)"),
    ("specs/mask2former_smoke.yaml", "segformer", "Mask2Former spec (model.arch: mask2former)"),
])
def test_a_spec_of_another_network_is_refused_naming_both(spec: str, arch: str, named: str) -> None:
    from flows.common import spec_from
    from oneformer.errors import SpecError

    with pytest.raises(SpecError, match=rf"parameter arch='{arch}' but the spec is a {re.escape(named)}") as e:
        spec_from(ActionInputs(spec=spec, arch=arch))
    assert spec in str(e.value) and f"{arch} default_specs" in str(e.value)
    shaped = ActionInputs(arch="oneformer", overrides={"dataset.segment": {"num_classes": 3}})  # SegFormer's keys
    with pytest.raises(SpecError, match="a SegFormer spec \\(its keys\\)"):
        spec_from(shaped)


@pytest.mark.parametrize("arch", ["oneformer", "mask2former", "segformer"])
def test_the_network_parameter_picks_its_defaults_and_agrees_with_its_own_spec(arch: str) -> None:
    from flows.common import spec_from

    spec = spec_from(ActionInputs(arch=arch))  # the embedded defaults of that network
    assert spec.arch == arch and spec.model_name == arch
    own = {"oneformer": "specs/smoke.yaml", "mask2former": "specs/mask2former_smoke.yaml",
           "segformer": "specs/segformer_smoke.yaml"}[arch]
    assert spec_from(ActionInputs(spec=own, arch=arch)).arch == arch
