"""A trial stops itself at automl.trial_timeout, inside its training loop, whatever the machine's speed."""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from tasks.training import TrialDeadline, TrialTimeout


class Slow(pl.LightningModule):
    """A one-weight model whose steps take a known 20 ms, so a deadline lands in a known epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(1, 1)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        time.sleep(0.02)
        return self.w(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(callbacks: list[pl.Callback], epochs: int) -> pl.Trainer:
    """Ten 20 ms steps an epoch on the CPU."""
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Slow(), DataLoader(TensorDataset(torch.ones(10, 1)), batch_size=1))
    return trainer


def test_a_trial_past_its_timeout_stops_in_the_loop_and_says_which_setting() -> None:
    t0 = time.time()
    with pytest.raises(TrialTimeout, match=r"automl.trial_timeout \(0.3 s\) in epoch [0-2] ") as stopped:
        fit([TrialDeadline(0.3)], epochs=1000)  # 200 s of steps: only the deadline ends this early
    assert time.time() - t0 < 30
    assert "raise automl.trial_timeout" in str(stopped.value)


def test_a_deadline_already_passed_at_setup_trains_no_step() -> None:
    started = time.time() - 10  # the trial's setup took longer than its timeout
    with pytest.raises(TrialTimeout, match="in epoch 0 at step 0"):
        fit([TrialDeadline(1, started=started)], epochs=1)


def test_a_trial_inside_its_timeout_trains_its_whole_budget() -> None:
    assert fit([TrialDeadline(3600)], epochs=2).current_epoch == 2
