"""The command line as a user runs it: templates, check, synth, schemas, clean errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from oneformer.actions import ACTIONS
from oneformer.cli import main, run
from oneformer.spec import load_spec


def oneformer(*args: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in its own process."""
    return subprocess.run([sys.executable, "-m", "oneformer.cli", *args], capture_output=True, text=True)


def cli(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """The CLI's entry point in this process (seconds faster than a new interpreter): exit code and output."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, done.value.code, out.out, out.err)


def test_default_specs_write_loadable_templates(tmp_path: Path) -> None:
    assert run(["default_specs", "-o", str(tmp_path), "results_dir=/r"]) == 0
    for action in ACTIONS:
        text = (tmp_path / f"{action}.yaml").read_text()
        assert "# " in text and f"{action}:" in text
        assert load_spec(tmp_path / f"{action}.yaml").results_dir == "/r"


def test_templates_say_where_our_defaults_differ_from_taos(tmp_path: Path) -> None:
    from oneformer.templates import TAO_DEFAULTS, yaml_scalar

    assert run(["default_specs", "-o", str(tmp_path), "--action", "train", "--action", "export"]) == 0
    text = (tmp_path / "train.yaml").read_text() + (tmp_path / "export.yaml").read_text()
    assert "  lr: 0.0001  # Learning rate of everything but the backbone. TAO's default is 0.0002; ours is " \
           "OneFormer's published recipe" in text
    assert "opset_version: 17  # " in text and "TAO's default is 12; 12 cannot hold GridSample" in text
    defaults = load_spec(None)
    for key, (tao, _) in TAO_DEFAULTS.items():  # every listed key: a real difference, said on its own line
        leaf = key.rpartition(".")[2]
        assert defaults.value_at(key) != tao, key
        assert any(line.strip().startswith(f"{leaf}: ") and f"TAO's default is {yaml_scalar(tao)};" in line
                   for line in text.splitlines()), key


def test_default_specs_take_a_users_spec_with_e_as_every_verb_does(small_synth: Path, tmp_path: Path) -> None:
    assert run(["default_specs", "-e", str(small_synth), "--action", "train", "train.num_epochs=7",
                "encryption_key=tlt_encode", f"results_dir={tmp_path}"]) == 0
    text = (tmp_path / "default_specs" / "train.yaml").read_text()  # <the spec's results_dir>/default_specs
    assert f"values from {small_synth}" in text.splitlines()[0] and "tlt_encode" not in text  # secrets masked
    spec = load_spec(tmp_path / "default_specs" / "train.yaml")
    assert spec.train.num_epochs == 7 and spec.model.one_former.num_object_queries == 12  # the smoke model's
    assert spec.dataset.label_map == load_spec(small_synth).dataset.label_map


def test_check_lists_every_problem_and_exits_nonzero(small_synth: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    res = cli(capsys, "check", "-e", str(small_synth), "--action", "train",
                    f"dataset.train.images={tmp_path}/gone.tar.gz", f"dataset.val.annotations={tmp_path}/gone.json")
    assert res.returncode == 2
    assert "gone.tar.gz does not exist" in res.stderr and "gone.json does not exist" in res.stderr
    assert "results_dir:" in res.stdout  # the resolved spec is printed
    ok = cli(capsys, "check", "-e", str(small_synth), "--action", "train")
    assert ok.returncode == 0, ok.stderr


def test_check_deployment_actions_name_their_inputs(small_synth: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    no_images = ["dataset.val.images=null", "dataset.test.images=null", "inference.images_dir=null",
                 "dataset.quant_calibration_dataset.images_dir=null"]
    res = cli(capsys, "check", "-e", str(small_synth), "--action", "gen_trt_engine", f"results_dir={tmp_path}",
                    *no_images)
    assert res.returncode == 2
    assert "gen_trt_engine compares the converted model with its source on real images" in res.stderr
    assert f"gen_trt_engine.onnx_file: {tmp_path}/export/model.onnx does not exist" in res.stderr


def test_bad_override_is_a_clean_error(small_synth: Path) -> None:
    res = oneformer("train", "-e", str(small_synth), "train.optim.lrr=1")
    assert res.returncode == 2 and "did you mean train.optim.lr" in res.stderr and "Traceback" not in res.stderr


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "spec.yaml":
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic_per_seed_and_in_bucket_layout(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run(["synth", "--out", str(tmp_path / name), "--train", "3", "--val", "2", "--size", "64",
                    "--seed", str(seed)]) == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    for split in ("train", "eval"):
        for f in ("images.tar.gz", "images_panoptic.tar.gz", "annotations.json", "label_map.json"):
            assert (tmp_path / "a" / split / f).is_file()
    for split in ("inference", "calibration"):
        assert (tmp_path / "a" / split / "images.tar.gz").is_file()
    spec = load_spec(tmp_path / "a" / "spec.yaml")
    assert spec.model.sem_seg_head.num_classes == 6


def test_committed_schemas_are_current(tmp_path: Path) -> None:
    assert run(["schema", "-o", str(tmp_path)]) == 0
    committed = Path(__file__).parents[2] / "specs" / "schemas"
    for action in ACTIONS:
        fresh = json.loads((tmp_path / f"{action}.schema.json").read_text())
        assert fresh == json.loads((committed / f"{action}.schema.json").read_text()), "run `make schemas`"
    lr = fresh["$defs"]["OptimConfig"]["properties"]["lr"]["automl"]
    assert lr == {"min": 1e-6, "max": 1e-2, "scale": "log", "default": 1e-4}


def test_export_without_a_checkpoint_says_what_to_do(small_synth: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    res = cli(capsys, "export", "-e", str(small_synth), f"results_dir={tmp_path}")
    assert res.returncode == 2 and "export.checkpoint=best: no checkpoints.json" in res.stderr
    assert "train first" in res.stderr and not list(tmp_path.rglob("*.onnx"))


def test_inference_without_images_is_an_error(small_synth: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    res = cli(capsys, "inference", "-e", str(small_synth), f"inference.images_dir={tmp_path}/empty",
                    f"results_dir={tmp_path}")
    assert res.returncode == 2 and "no images" in res.stderr


def test_help_lists_every_action_from_the_one_table(capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.actions import TABLE

    monkeypatch.setenv("COLUMNS", "240")  # one line per action in argparse's help
    res = cli(capsys, "--help")
    assert res.returncode == 0
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in res.stdout.splitlines()
              if line.startswith("    ") and line.split()[0] in TABLE}
    assert listed == {a.name: a.summary for a in TABLE.values()}
