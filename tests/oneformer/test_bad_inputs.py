"""Bad inputs, one row each, through the CLI as a user runs it: exit code 2, a message that names the file and the
spec key and says what to do, no traceback, and no results folder when the failure is found in validation.

To add a case: write a builder `def _my_case(c: Ctx) -> list[str]` that makes the broken input under `c.tmp` from
the tiny synthetic dataset and returns the CLI arguments after the verb's `-e SPEC`, then add a `Case` row to CASES.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oneformer.cli import main


@dataclass
class Ctx:
    """What a builder works with: the pristine dataset (read only), a scratch folder, the session's spec."""

    root: Path
    tmp: Path
    spec: Path

    @property
    def results(self) -> Path:
        return self.tmp / "results"


@dataclass(frozen=True)
class Case:
    """One bad input: the CLI verb(s) that must refuse it, how to build it, and what the message must name."""

    id: str
    verbs: tuple[str, ...]  # e.g. ("check", "train"); "check" runs `check --action train`, "check-deep" with --deep
    build: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]  # substrings of the error; "{tmp}" and "{root}" are filled in
    validation: bool = True  # found before anything runs: no results folder may exist afterwards
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ("weights_only=False",)  # substrings that must not appear
    skip: str | None = None


# ----------------------------------------------------------------------------- builders
def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def edit_tar(src: Path, dst: Path, changes: dict[str, bytes | None]) -> Path:
    """A copy of a .tar.gz with members replaced (bytes), removed (None) or added."""
    members: dict[str, bytes] = {}
    with tarfile.open(src) as tar:
        for m in tar.getmembers():
            if m.isfile():
                members[m.name] = tar.extractfile(m).read()
    for name, data in changes.items():
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return dst


def _member(c: Ctx, archive: str, name: str) -> bytes:
    with tarfile.open(c.root / "train" / archive) as tar:
        return tar.extractfile(name).read()


def _train_images(c: Ctx, changes: dict[str, bytes | None]) -> list[str]:
    path = edit_tar(c.root / "train/images.tar.gz", c.tmp / "train/images.tar.gz", changes)
    return [f"dataset.train.images={path}"]


def _train_panoptic(c: Ctx, changes: dict[str, bytes | None]) -> list[str]:
    path = edit_tar(c.root / "train/images_panoptic.tar.gz", c.tmp / "train/images_panoptic.tar.gz", changes)
    return [f"dataset.train.panoptic={path}"]


def _annotations(c: Ctx, text: str) -> list[str]:
    path = c.tmp / "train" / "annotations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return [f"dataset.train.annotations={path}"]


def _edited_annotations(c: Ctx, edit: Callable[[dict], None]) -> list[str]:
    data = json.loads((c.root / "train/annotations.json").read_text())
    edit(data)
    return _annotations(c, json.dumps(data))


def _spec_file(c: Ctx, text: str) -> list[str]:
    (c.tmp / "spec.yaml").write_text(text)
    return ["-e", str(c.tmp / "spec.yaml")]  # replaces the session spec


def _hostile(path: Path, marker: Path) -> Path:
    """A pickle whose loading runs code (it would create `marker`)."""

    class Payload:
        def __reduce__(self):  # noqa: ANN204 - pickle protocol
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {}, "oneformer": {}, "payload": Payload()}, path)
    return path


def _hostile_resume(c: Ctx) -> list[str]:
    return [f"train.resume_training_checkpoint_path={_hostile(c.tmp / 'hostile.pth', c.tmp / 'PWNED')}"]


def _foreign_resume(c: Ctx) -> list[str]:
    torch.save({"model": {"w": torch.zeros(2)}}, c.tmp / "foreign.pth")
    return [f"train.resume_training_checkpoint_path={c.tmp / 'foreign.pth'}"]


def _text_resume(c: Ctx) -> list[str]:
    (c.tmp / "notes.pth").write_text("this is not a checkpoint\n")
    return [f"train.resume_training_checkpoint_path={c.tmp / 'notes.pth'}"]


def _hostile_pretrained(key: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [f"{key}={_hostile(c.tmp / 'hostile.pth', c.tmp / 'PWNED')}"]


def _hostile_evaluate(c: Ctx) -> list[str]:
    return [f"evaluate.checkpoint={_hostile(c.tmp / 'hostile.pth', c.tmp / 'PWNED')}"]


def _text_onnx(c: Ctx) -> list[str]:
    (c.tmp / "model.onnx").write_text("not a model\n")
    return [f"inference.checkpoint={c.tmp / 'model.onnx'}"]


def _results_under_file(c: Ctx) -> list[str]:
    (c.tmp / "afile").write_text("x")
    return [f"results_dir={c.tmp / 'afile' / 'results'}"]


def _results_read_only(c: Ctx) -> list[str]:
    (c.tmp / "ro").mkdir()
    (c.tmp / "ro").chmod(0o555)
    return [f"results_dir={c.tmp / 'ro' / 'results'}"]


def _empty_archive(c: Ctx) -> list[str]:
    with tarfile.open(c.tmp / "images.tar.gz", "w:gz"):
        pass
    return [f"dataset.train.images={c.tmp / 'images.tar.gz'}"]


def _small_image(c: Ctx) -> list[str]:
    return _train_images(c, {"images/train_00002.jpg": _encode(np.full((48, 48, 3), 128, np.uint8), "JPEG")})


def _truncated_jpeg(c: Ctx) -> list[str]:
    data = _member(c, "images.tar.gz", "images/train_00003.jpg")
    return _train_images(c, {"images/train_00003.jpg": data[: len(data) // 2]})


def _truncated_png(c: Ctx) -> list[str]:
    data = _member(c, "images_panoptic.tar.gz", "images_panoptic/train_00001.png")
    return _train_panoptic(c, {"images_panoptic/train_00001.png": data[: len(data) // 2]})


def _set_category(data: dict) -> None:
    data["annotations"][0]["segments_info"][0]["category_id"] = 42


def _rename_image(data: dict) -> None:
    data["images"][1]["file_name"] = "nowhere.jpg"


def _drop_segments(data: dict) -> None:
    del data["annotations"][2]["segments_info"]


def _export_into_folder(c: Ctx) -> list[str]:
    (c.tmp / "onnx").mkdir()
    return [f"export.checkpoint={_random_weights(c)}", f"export.onnx_file={c.tmp / 'onnx'}", "export.overwrite=true"]


def _export_unwritable(c: Ctx) -> list[str]:
    return [f"export.checkpoint={_random_weights(c)}", "export.onnx_file=/proc/oneformer/model.onnx"]


def _quantize_unwritable(c: Ctx) -> list[str]:
    return [f"quantize.model_path={_random_weights(c)}", "quantize.onnx_file=/proc/model.int8.onnx"]


def _random_weights(c: Ctx) -> Path:
    """The smoke network with random weights on this dataset, as a checkpoint of ours."""
    from oneformer.data.datasets import read_labels
    from oneformer.model.checkpoint import save_weights
    from oneformer.model.network import build_network, hf_config
    from oneformer.spec import load_spec

    spec = load_spec(c.spec)
    return save_weights(c.tmp / "random.pth", build_network(hf_config(spec.model, read_labels(spec).names)),
                        read_labels(spec), spec.model_dump(mode="json"))


def _resume_other_network(c: Ctx) -> list[str]:
    """A resumable checkpoint of the spec's network, resumed with model.one_former.hidden_dim changed."""
    raw = torch.load(_random_weights(c), weights_only=True)
    raw.update(optimizer_states=[], loops={}, lr_schedulers=[])
    torch.save(raw, c.tmp / "resume.pth")
    return [f"train.resume_training_checkpoint_path={c.tmp / 'resume.pth'}", "model.one_former.hidden_dim=128",
            "model.text_encoder.width=128"]


def _label_map(c: Ctx, text: str) -> list[str]:
    (c.tmp / "label_map.json").write_text(text)
    return [f"dataset.label_map={c.tmp / 'label_map.json'}"]


def _empty_folder(c: Ctx) -> list[str]:
    (c.tmp / "no-images").mkdir()
    return [f"inference.checkpoint={_random_weights(c)}", f"inference.images_dir={c.tmp / 'no-images'}"]


IMAGES = "{tmp}/train/images.tar.gz"
CASES = [
    Case("empty-spec", ("train", "check"), lambda c: _spec_file(c, ""), ("{tmp}/spec.yaml", "the file is empty")),
    Case("spec-not-a-mapping", ("train",), lambda c: _spec_file(c, "- train\n- eval\n"),
         ("{tmp}/spec.yaml", "the top level must be a mapping")),
    Case("annotations-not-json", ("check", "train"), lambda c: _annotations(c, "{not json"),
         ("dataset.train.annotations", "{tmp}/train/annotations.json is not valid JSON (line 1, column 2")),
    Case("annotations-a-list", ("check", "train"), lambda c: _annotations(c, "[1, 2]"),
         ("dataset.train.annotations", "annotations.json holds a JSON list, not a COCO object")),
    Case("annotations-missing-field", ("check",), lambda c: _edited_annotations(c, _drop_segments),
         ("dataset.train.annotations", "lacks the field 'segments_info'")),
    Case("category-not-in-label-map", ("check", "train"), lambda c: _edited_annotations(c, _set_category),
         ("dataset.train.annotations", "category id 42 is not in the label map (dataset.label_map)")),
    Case("class-beyond-num-classes", ("check", "train"), lambda c: ["model.sem_seg_head.num_classes=4"],
         ("dataset.label_map", "category id 5", "beyond model.sem_seg_head.num_classes=4")),
    Case("member-missing", ("check", "train"), lambda c: _edited_annotations(c, _rename_image),
         ("missing file dataset.train.images: images/nowhere.jpg in {root}/train/images.tar.gz",)),
    Case("empty-archive", ("check", "train"), _empty_archive,
         ("dataset.train.images: {tmp}/images.tar.gz is an empty archive",)),
    Case("image-and-mask-sizes-differ", ("check", "train"), _small_image,
         (f"image dataset.train.images: images/train_00002.jpg in {IMAGES} is 48x48",
          "panoptic PNG dataset.train.panoptic: images_panoptic/train_00002.png in {root}/train/images_panoptic.tar.gz "
          "is 64x64")),
    Case("image-not-an-image", ("check", "train"), lambda c: _train_images(c, {"images/train_00004.jpg": b"oops"}),
         (f"dataset.train.images: images/train_00004.jpg in {IMAGES} cannot be read as an image",)),
    Case("truncated-jpeg", ("check-deep", "train"), _truncated_jpeg,
         (f"dataset.train.images: images/train_00003.jpg in {IMAGES} cannot be decoded",)),
    Case("truncated-png", ("check-deep", "train"), _truncated_png,
         ("dataset.train.panoptic: images_panoptic/train_00001.png in {tmp}/train/images_panoptic.tar.gz cannot be "
          "decoded",)),
    Case("results-dir-under-a-file", ("check", "train"), _results_under_file,
         ("results_dir: {tmp}/afile/results/train cannot be created: {tmp}/afile is a file",)),
    Case("results-dir-read-only", ("check", "train"), _results_read_only,
         ("results_dir: {tmp}/ro/results/train cannot be created or written", "not writable"),
         skip="root writes anywhere" if os.geteuid() == 0 else None),
    Case("resume-hostile-pickle", ("check", "train"), _hostile_resume,
         ("train.resume_training_checkpoint_path: {tmp}/hostile.pth is not a checkpoint of ours",
          "re-save the weights"), env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
    Case("resume-not-ours", ("check", "train"), _foreign_resume,
         ("train.resume_training_checkpoint_path: {tmp}/foreign.pth is not a oneformer checkpoint",)),
    Case("resume-text-file", ("train",), _text_resume,
         ("train.resume_training_checkpoint_path: {tmp}/notes.pth is not a checkpoint of ours",)),
    Case("pretrained-model-hostile-pickle", ("check", "train"), _hostile_pretrained("train.pretrained_model"),
         ("train.pretrained_model: {tmp}/hostile.pth is not a checkpoint of ours",),
         env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
    Case("pretrained-backbone-hostile-pickle", ("check", "train"), _hostile_pretrained("train.pretrained_backbone"),
         ("train.pretrained_backbone: {tmp}/hostile.pth is not a checkpoint of ours",),
         env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
    Case("evaluate-hostile-pickle", ("evaluate",), _hostile_evaluate,
         ("{tmp}/hostile.pth is not a checkpoint of ours",), validation=False,
         env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
    Case("hidden-dim-without-text-width", ("check", "train", "export"), lambda c: ["model.one_former.hidden_dim=128"],
         ("model.one_former.hidden_dim (128) must equal model.text_encoder.width (64)", "change both together")),
    Case("resume-another-network", ("check", "train"), _resume_other_network,
         ("train.resume_training_checkpoint_path: {tmp}/resume.pth was written by another network",
          "model.one_former.hidden_dim (checkpoint 64, spec 128)", "in a new results_dir")),
    Case("export-file-is-a-folder", ("export",), _export_into_folder,
         ("export.onnx_file: {tmp}/onnx is a folder; name the file to write",), validation=False),
    Case("export-file-unwritable", ("export",), _export_unwritable,
         ("export.onnx_file: /proc/oneformer/model.onnx cannot be",), validation=False),
    Case("quantize-file-unwritable", ("quantize",), _quantize_unwritable,
         ("quantize.onnx_file: /proc/model.int8.onnx cannot be",), validation=False),
    Case("label-map-not-json", ("check", "train"), lambda c: _label_map(c, "{bad"),
         ("dataset.label_map: {tmp}/label_map.json is not valid JSON (line 1, column 2",)),
    Case("label-map-duplicate-id", ("check", "train"),
         lambda c: _label_map(c, '[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]'),
         ("dataset.label_map: {tmp}/label_map.json: category id 1 appears twice",)),
    Case("label-map-id-zero", ("check", "train"), lambda c: _label_map(c, '[{"id": 0, "name": "a"}]'),
         ("dataset.label_map: {tmp}/label_map.json: category id 0 ('a') must be > 0",)),
    Case("label-map-missing", ("check", "train"), lambda c: [f"dataset.label_map={c.tmp / 'nowhere.json'}"],
         ("dataset.label_map", "{tmp}/nowhere.json does not exist")),
    Case("unknown-key", ("check", "train"), lambda c: ["train.num_epoch=3"],
         ("train.num_epoch: unknown key; did you mean train.num_epochs?",)),
    Case("value-out-of-range", ("check", "train"), lambda c: ["train.num_epochs=-1"],
         ("train.num_epochs: Input should be greater than 0 (got -1)",)),
    Case("unknown-sampler", ("train",), lambda c: ["automl.sampler=bogus"],
         ("automl.sampler: Input should be 'tpe', 'random', 'gp' or 'cmaes' (got 'bogus')",)),
    Case("inference-images-dir-unset", ("inference",),
         lambda c: [f"inference.checkpoint={_random_weights(c)}", "inference.images_dir="],
         ("inference.images_dir is not set: inference reads images from it (not dataset.test.images)",),
         validation=False),
    Case("inference-images-dir-empty", ("inference",), _empty_folder,
         ("inference.images_dir: no images", "found in {tmp}/no-images"), validation=False),
    Case("export-shape-too-small", ("export",),
         lambda c: [f"export.checkpoint={_random_weights(c)}", "export.input_height=16", "export.input_width=16"],
         ("export.input_height=16 is not a multiple of 32 (model.one_former.size_divisibility)",)),
    Case("evaluate-checkpoint-missing", ("evaluate",), lambda c: [f"evaluate.checkpoint={c.tmp / 'nope.pth'}"],
         ("evaluate.checkpoint: checkpoint {tmp}/nope.pth does not exist",), validation=False),
    Case("onnx-model-is-text", ("inference",), _text_onnx,
         ("{tmp}/model.onnx is not an ONNX model ONNX Runtime can load",), validation=False),
]
ROWS = [pytest.param(case, verb, id=f"{case.id}-{verb}",
                     marks=[pytest.mark.skip(reason=case.skip)] if case.skip else [])
        for case in CASES for verb in case.verbs]


def _argv(verb: str, spec: Path, extra: list[str], results: Path) -> list[str]:
    if "-e" in extra:  # the builder wrote its own spec file
        i = extra.index("-e")
        spec, extra = Path(extra[i + 1]), extra[:i] + extra[i + 2:]
    head = {"check": ["check", "--action", "train"], "check-deep": ["check", "--action", "train", "--deep"]}
    return [*head.get(verb, [verb]), "-e", str(spec), f"results_dir={results}", *extra]


@pytest.mark.parametrize(("case", "verb"), ROWS)
def test_bad_input_is_a_clean_error(case: Case, verb: str, small_synth: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Ctx(small_synth.parent, tmp_path, small_synth)
    argv = _argv(verb, c.spec, case.build(c), c.results)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as done:  # any other exception would be a traceback for the user
        main(argv)
    out = capsys.readouterr()
    assert done.value.code == 2, out.err
    assert "Traceback" not in out.err + out.out
    for text in case.expect:
        assert text.format(tmp=tmp_path, root=c.root) in out.err, out.err
    for text in case.absent:
        assert text not in out.err, out.err
    assert not (tmp_path / "PWNED").exists(), "loading the checkpoint ran its code"
    if case.validation:
        assert not c.results.exists(), f"{c.results} was created before validation failed"


def test_hostile_resume_runs_no_code_in_a_real_process(small_synth: Path, tmp_path: Path) -> None:
    """The hostile checkpoint through `python -m oneformer.cli train`, with the variable that would make
    PyTorch's default unsafe set in the environment."""
    argv = _argv("train", small_synth, _hostile_resume(Ctx(small_synth.parent, tmp_path, small_synth)),
                 tmp_path / "results")
    res = subprocess.run([sys.executable, "-m", "oneformer.cli", *argv], capture_output=True, text=True,
                         env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "is not a checkpoint of ours" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "results").exists()


def test_check_passes_on_good_data_and_deep_finds_what_headers_miss(small_synth: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    for deep in ([], ["--deep"]):
        with pytest.raises(SystemExit) as done:
            main(["check", "--action", "train", *deep, "-e", str(small_synth), f"results_dir={tmp_path}/r"])
        assert done.value.code == 0, capsys.readouterr().err
    broken = _truncated_jpeg(Ctx(small_synth.parent, tmp_path, small_synth))
    with pytest.raises(SystemExit) as done:  # a truncated JPEG has a valid header: only decoding finds it
        main(["check", "--action", "train", "-e", str(small_synth), f"results_dir={tmp_path}/r", *broken])
    assert done.value.code == 0
    assert not (tmp_path / "r").exists()


def test_lightning_resume_loading_is_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past validation, Lightning's own loading (what `fit(ckpt_path=...)` calls) refuses the file too."""
    from oneformer.errors import CheckpointError
    from oneformer.training.trainer import SafeCheckpointIO

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = _hostile(tmp_path / "hostile.pth", tmp_path / "PWNED")
    with pytest.raises(CheckpointError, match="is not a checkpoint of ours") as err:
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    assert "weights_only=False" not in str(err.value)
    assert not (tmp_path / "PWNED").exists()


def _calls(root: Path) -> list[tuple[str, int, str]]:
    """Every torch.load call and every call passing ckpt_path in the project's code, with its keywords."""
    import ast

    found = []
    for package in ("oneformer", "tasks", "flows", "benchmarks"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call):
                    continue
                name = ast.unparse(node.func)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if name.endswith("torch.load") or "ckpt_path" in keywords:
                    found.append((f"{path.relative_to(root)}:{node.lineno}", name,
                                  keywords.get("weights_only", "<not passed>")))
    return found


def test_every_checkpoint_load_passes_weights_only_true() -> None:
    """PyTorch's default can be flipped by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; only an explicit True holds."""
    calls = _calls(Path(__file__).resolve().parents[2])
    assert calls, "the scan found no torch.load at all"
    assert [c for c in calls if c[2] != "True"] == []
