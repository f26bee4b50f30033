"""DataLoader workers forked inside a Prefect task: evaluation and training with num_workers > 0 run there as they do
from the command line (every such loader failed at its workers' exit before)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from oneformer.actions.evaluate import evaluate
from oneformer.actions.train import train
from oneformer.spec import load_spec


def test_evaluate_and_train_with_loader_workers_inside_a_prefect_task(prefect_api, small_synth: Path,  # noqa: ANN001
                                                                       random_checkpoint: Path, tmp_path: Path) -> None:
    @task
    def scored() -> dict:
        return evaluate(load_spec(small_synth, [f"results_dir={tmp_path / 'e'}", "dataset.test.num_workers=2",
                                                f"evaluate.checkpoint={random_checkpoint}"]))

    @task
    def trained() -> dict:
        return train(load_spec(small_synth, [f"results_dir={tmp_path / 't'}", "train.num_epochs=1",
                                             "dataset.train.num_workers=2", "dataset.val.num_workers=2"]))

    @flow
    def both() -> tuple[dict, dict]:
        return scored(), trained()

    metrics, run = both()
    assert 0 <= metrics["mIoU"] <= 1 and run["best"]["metrics"]["mIoU"] >= 0
    assert len(run["checkpoints"]) == 1
