"""Trials run by a deployment: the study flow refuses what a trial's flow run could not use, before any trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from oneformer.errors import SpecError
from oneformer.spec import load_spec
from tasks.trial_runs import reachable, refuse_secrets_in


def test_a_trial_deployment_that_does_not_exist_is_named_with_how_to_deploy_it(prefect_api: None) -> None:
    with pytest.raises(SpecError, match=r"oneformer-trial/nowhere.*no such deployment.*deploy --name nowhere"):
        reachable("oneformer-trial/nowhere")


def test_without_a_prefect_server_there_is_no_deployment_to_run_trials_on() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}), \
            pytest.raises(SpecError, match="need a Prefect server.*leave automl.trial_deployment empty"):
        reachable("oneformer-trial/trial")


def test_a_spec_with_a_password_is_not_handed_to_trial_flow_runs(small_synth: Path) -> None:
    spec = load_spec(small_synth, {"automl.storage": "postgresql://u:hunter2@db:5432/optuna",
                                   "automl.trial_deployment": "oneformer-trial/trial"})
    with pytest.raises(SpecError, match=r"automl.storage hold a secret.*PGPASSWORD") as err:
        refuse_secrets_in(spec)
    assert "hunter2" not in str(err.value)
    refuse_secrets_in(load_spec(small_synth, {"automl.storage": "postgresql://u@db:5432/optuna"}))  # no password


def test_only_trial_deployments_are_accepted(small_synth: Path) -> None:
    with pytest.raises(SpecError, match="automl.trial_deployment"):
        load_spec(small_synth, {"automl.trial_deployment": "oneformer-pipeline/nightly"})
