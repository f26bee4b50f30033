"""`make demo-all` as a user runs it, twice in the same folder (the second night): both runs finish, print the
side-by-side table and register a version for each new best checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_comparison_runs_again_in_its_own_folder(tmp_path: Path) -> None:
    env = {**os.environ, "ONEFORMER_CACHE": str(tmp_path / "cache"), "PREFECT_HOME": str(tmp_path / "prefect")}
    command = [sys.executable, "-m", "flows.compare", "--out", ".", "--trials", "1", "--runs", "2", "--images", "16",
               "train.num_epochs=1"]
    # from the output folder, as the Makefile runs it: its folders must not shadow packages; night 2 runs one
    # network (each network's own second night is the pipeline's, covered in test_nights)
    for night, archs in ((1, ["oneformer", "segformer"]), (2, ["segformer"])):
        args = [a for arch in archs for a in ("--arch", arch)]
        done = subprocess.run(command + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = json.loads((tmp_path / "comparison.json").read_text())
        assert set(rows) == set(archs)
        if night == 1:
            assert "PQ" in rows["oneformer"]["metrics"] and "PQ" not in rows["segformer"]["metrics"]
            first = rows["segformer"]["checkpoint"]
        assert all(r["latency_ms"]["ort_int8"] > 0 and r["int8_mb"] < r["onnx_mb"] for r in rows.values())
        # a new best checkpoint is a new version; a night whose best is night 1's registers nothing new
        version = 1 if night == 1 or rows["segformer"]["checkpoint"] == first else 2
        assert rows["segformer"]["registered"] == f"models:/segformer/{version}"
        assert rows["segformer"]["new_version"] == (night == 1 or version == 2)
        assert "SegFormer" in done.stdout and "ORT FP32 ms" in done.stdout
