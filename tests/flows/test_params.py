"""Action flows take flat parameters (each ActionInputs field is one), are named for their action and parent, and
run from the command line with overrides (seconds: probe flows, no model)."""

from __future__ import annotations

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
    assert seen == {"parent": "abc", "spec": "specs/smoke.yaml", "overrides": {"evaluate.batch_size": 2}}
    assert capsys.readouterr().out == "done\n"
    monkeypatch.setattr(sys, "argv", ["flows/train.py", "train.num_epochs=1"])
    run_from_argv(lambda **kw: seen.update(kw, parent=None), with_parent=False)
    assert seen == {"parent": None, "spec": None, "overrides": {"train.num_epochs": 1}}
    monkeypatch.setattr(sys, "argv", ["flows/evaluate.py"])
    with pytest.raises(SystemExit, match="usage: python -m flows.evaluate PARENT"):
        run_from_argv(lambda **kw: None)
