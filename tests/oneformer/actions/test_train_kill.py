"""`oneformer train` killed (SIGKILL) mid-epoch and mid-checkpoint-write, then run again: it resumes from the last
complete checkpoint, never from a half-written one, and ends at the same epoch count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oneformer.actions.train import train
from oneformer.model.checkpoint import read_index
from oneformer.spec import load_spec

pytestmark = pytest.mark.slow
EPOCHS = 4


def killed_run(small_synth: Path, results: Path, when: str) -> None:
    """`python -m oneformer.cli train` killed once `when` happens: "mid-epoch" (the first checkpoint is written,
    the next epoch trains) or "mid-write" (a checkpoint's temporary file exists)."""
    command = [sys.executable, "-m", "oneformer.cli", "train", "-e", str(small_synth), f"results_dir={results}",
               f"train.num_epochs={EPOCHS}"]
    log = (results.parent / f"{when}.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    train_dir, deadline = results / "train", time.monotonic() + 300
    try:
        while True:
            if when == "mid-write" and any(train_dir.glob(".model_epoch_*.partial")):
                break
            if when == "mid-epoch" and any(train_dir.glob("model_epoch_000_*.pth")):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"training ended before the kill ({when}): {(results.parent / f'{when}.log').read_text()}")
            time.sleep(0.001)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("when", ["mid-epoch", "mid-write"])
def test_training_killed_resumes_from_the_last_complete_checkpoint(small_synth: Path, tmp_path: Path,
                                                                   when: str) -> None:
    results = tmp_path / "results"
    results.mkdir()
    killed_run(small_synth, results, when)
    train_dir = results / "train"
    before = [e["epoch"] for e in read_index(train_dir)]
    assert all(p.stat().st_size > 0 for p in train_dir.glob("model_epoch_*.pth"))  # only whole ones have names

    result = train(load_spec(small_synth, [f"results_dir={results}", f"train.num_epochs={EPOCHS}"]))

    index = read_index(train_dir)
    assert [e["epoch"] for e in index] == list(range(EPOCHS))  # every epoch once: the same count as unbroken
    assert result["best"] is not None and not list(train_dir.glob(".*.partial"))
    status = [json.loads(line) for line in (train_dir / "status.json").read_text().splitlines()]
    started = [s["epoch"] for s in status if s["status"] == "STARTED"]
    assert started[-1] == len(before)  # the rerun began after the last complete checkpoint
    assert (train_dir / "oneformer_model_latest.pth").resolve().name == Path(index[-1]["path"]).name
