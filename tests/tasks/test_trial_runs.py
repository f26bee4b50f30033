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


def test_a_resumed_study_leaves_a_trial_flow_run_that_still_runs_alone(prefect_api: None) -> None:
    """A killed pipeline's deployed trials go on on their workers; the resumed study must not fail and retry them."""
    import uuid

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    from tasks.trial_runs import still_running

    @flow(name="oneformer-trial")
    def stand_in() -> None:
        """A flow to hold flow runs in given states."""

    with get_client(sync_client=True) as client:
        running = client.create_flow_run(stand_in, state=Running())
        done = client.create_flow_run(stand_in, state=Completed())
    assert still_running(str(running.id))
    assert not still_running(str(done.id)) and not still_running(str(uuid.uuid4())) and not still_running("")
