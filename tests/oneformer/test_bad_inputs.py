"""Bad inputs, one row each, through the CLI as a user runs it: exit code 2, a message that names the file and the
spec key and says what to do, no traceback, and no results folder when the failure is found in validation.

To add a case: write a builder `def _my_case(c: Ctx) -> list[str]` that makes the broken input under `c.tmp` from
the tiny synthetic dataset and returns the CLI arguments after the verb's `-e SPEC`, then add a `Case` row to CASES.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from logs import LogLines
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
    flow_expect: tuple[str, ...] | None = None  # where the flow's message differs (a parent model, not a spec key)
    # found before the flow's results folder exists; an action flow's parent model is resolved into that folder,
    # so what the action finds in its model or spec (not in its data) is recorded as a FAILED MLflow run there
    flow_validation: bool | None = None


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


def _odd_member(name: str) -> Callable[[Ctx], list[str]]:
    """The train images archive with its first image stored under `name` (absolute, or climbing out with '..')."""

    def build(c: Ctx) -> list[str]:
        data = _member(c, "images.tar.gz", "images/train_00000.jpg")
        return _train_images(c, {"images/train_00000.jpg": None, name: data})

    return build


def _tao_checkpoint(c: Ctx) -> Path:
    """A checkpoint as TAO's OneFormer writes it: Lightning's layout with its config kept as OmegaConf objects
    (stood in for by a class of that module path, so the test needs no omegaconf)."""
    import types

    module = types.ModuleType("omegaconf.dictconfig")
    DictConfig = type("DictConfig", (dict,), {"__module__": "omegaconf.dictconfig"})
    module.DictConfig = DictConfig
    saved = {name: sys.modules.get(name) for name in ("omegaconf", "omegaconf.dictconfig")}
    sys.modules.update({"omegaconf": types.ModuleType("omegaconf"), "omegaconf.dictconfig": module})
    try:
        torch.save({"state_dict": {"model.w": torch.zeros(2)}, "epoch": 3,
                    "hyper_parameters": {"experiment_spec": DictConfig(dataset={"label_map": "/results/x.json"})}},
                   c.tmp / "tao_oneformer.pth")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return c.tmp / "tao_oneformer.pth"


def _predictions(c: Ctx, keep: int | None = None, shrink: str | None = None) -> list[str]:
    """evaluate.predictions: the eval split's own semantic masks as raw-id PNGs (`keep` of them; `shrink` one)."""
    folder = c.tmp / "predictions" / "semantic"
    folder.mkdir(parents=True)
    (folder / "ids.json").write_text(json.dumps({"semantic_ids": "raw", "unlabeled": 0}))
    for png in sorted((c.root / "eval/semantic").glob("*.png"))[:keep]:
        with Image.open(png) as im:
            (im.resize((32, 32), Image.NEAREST) if png.stem == shrink else im).save(folder / png.name)
    return [f"evaluate.predictions={folder.parent}"]


def _predictions_not_json(c: Ctx) -> list[str]:
    (c.tmp / "predictions").mkdir()
    (c.tmp / "predictions" / "instances.json").write_text("[{oops")
    return [f"evaluate.predictions={c.tmp / 'predictions'}"]


def _unlisted_segment(c: Ctx) -> list[str]:
    """A panoptic PNG with a patch of segment id 77, which its segments_info does not list."""
    with Image.open(io.BytesIO(_member(c, "images_panoptic.tar.gz", "images_panoptic/train_00001.png"))) as im:
        rgb = np.asarray(im.convert("RGB")).copy()
    rgb[:8, :8] = (77, 0, 0)
    return _train_panoptic(c, {"images_panoptic/train_00001.png": _encode(rgb, "PNG")})


def _semantic_unknown_value(c: Ctx) -> list[str]:
    """Semantic masks (TAO's JSONL layout) with one pixel block of value 9, an id the label map lacks."""
    import shutil

    shutil.copytree(c.root / "train/semantic", c.tmp / "train/semantic")
    shutil.copy(c.root / "train/semantic.jsonl", c.tmp / "train/semantic.jsonl")
    mask = c.tmp / "train/semantic/train_00002.png"
    with Image.open(mask) as im:
        values = np.asarray(im).copy()
    values[:8, :8] = 9
    Image.fromarray(values).save(mask)
    return [f"dataset.train.annotations={c.tmp / 'train/semantic.jsonl'}", "dataset.train.panoptic=null"]


def _s3_down(c: Ctx) -> list[str]:
    return ["dataset.train.images=s3://data/train/images.tar.gz"]


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
          "give one written by `oneformer train`"), env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
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
         ("{tmp}/hostile.pth is not a checkpoint of ours",),
         env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, flow_validation=False),
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
         ("export.input_height=16 is not a multiple of 32 (model.one_former.size_divisibility)",),
         flow_validation=False),
    Case("evaluate-checkpoint-missing", ("evaluate",), lambda c: [f"evaluate.checkpoint={c.tmp / 'nope.pth'}"],
         ("evaluate.checkpoint: checkpoint {tmp}/nope.pth does not exist",),
         flow_expect=("parent {tmp}/nope.pth: no such file, MLflow run id or models:/ URI",)),
    Case("onnx-model-is-text", ("inference",), _text_onnx,
         ("{tmp}/model.onnx is not an ONNX model ONNX Runtime can load",), validation=False),
    Case("archive-member-absolute", ("check", "train"), _odd_member("/images/train_00000.jpg"),
         (f"dataset.train.images: cannot extract {IMAGES}: its member '/images/train_00000.jpg' has an absolute "
          "path", "rebuild it from the folder that holds the images")),
    Case("archive-member-escapes", ("check", "train"), _odd_member("../images/train_00000.jpg"),
         (f"dataset.train.images: cannot extract {IMAGES}: its member '../images/train_00000.jpg' points outside "
          "the extraction folder",)),
    # TAO's documented pattern: its checkpoints keep OmegaConf objects, and its advice is to turn safe loading off
    Case("tao-omegaconf-checkpoint", ("evaluate",), lambda c: [f"evaluate.checkpoint={_tao_checkpoint(c)}"],
         ("{tmp}/tao_oneformer.pth is not a checkpoint of ours", "omegaconf.dictconfig.DictConfig object",
          "give one written by `oneformer train`"), env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
         absent=("weights_only=False", "\x1b[", "you have two options"), flow_validation=False),
    Case("tao-omegaconf-pretrained", ("check", "train"), lambda c: [f"train.pretrained_model={_tao_checkpoint(c)}"],
         ("train.pretrained_model: {tmp}/tao_oneformer.pth is not a checkpoint of ours", "TAO or Lightning checkpoint",
          "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD does not change this")),
    Case("predictions-missing", ("evaluate",), lambda c: _predictions(c, keep=2),
         ("evaluate.predictions: {tmp}/predictions has no prediction for semantic: 2 of 4 images",
          "set evaluate.missing_predictions=empty")),
    Case("predictions-other-size", ("evaluate",), lambda c: _predictions(c, shrink="eval_00002"),
         ("evaluate.predictions: {tmp}/predictions/semantic/eval_00002.png is 32x32 (HxW), but the ground truth of "
          "eval_00002.jpg is 64x64",), validation=False),
    Case("predictions-not-json", ("evaluate",), _predictions_not_json,
         ("evaluate.predictions: {tmp}/predictions/instances.json is not JSON",)),
    Case("predictions-missing-folder", ("evaluate",), lambda c: [f"evaluate.predictions={c.tmp / 'nowhere'}"],
         ("evaluate.predictions: {tmp}/nowhere does not exist",)),
    Case("panoptic-png-unlisted-segment", ("check-deep", "train"), _unlisted_segment,
         ("dataset.train.panoptic: images_panoptic/train_00001.png in {tmp}/train/images_panoptic.tar.gz holds segment "
          "ids [77] that dataset.train.annotations", "does not list in the segments_info of train_00001.jpg")),
    Case("semantic-mask-unknown-value", ("check-deep", "train"), _semantic_unknown_value,
         ("{tmp}/train/semantic/train_00002.png holds values [9] that are neither ids of dataset.label_map nor 0 or "
          "dataset.ignore_value",)),
    Case("s3-endpoint-down", ("train",), _s3_down,
         ("dataset.train.images: reading s3://data/train/images.tar.gz failed", "Check the endpoint "
          "(AWS_ENDPOINT_URL) and the network"),
         env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
              "ONEFORMER_S3_CONNECT_TIMEOUT": "1", "AWS_MAX_ATTEMPTS": "1"}),  # s3fs's and Prefect's retries remain
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


# The flow each verb reaches, and the spec key whose value becomes the flow's parent model.
FLOWS = {"train": ("flows.train", "train_flow", None), "evaluate": ("flows.evaluate", "evaluate_flow",
         "evaluate.checkpoint"), "inference": ("flows.inference", "inference_flow", "inference.checkpoint"),
         "export": ("flows.export", "export_flow", "export.checkpoint"),
         "quantize": ("flows.quantize", "quantize_flow", "quantize.model_path")}
FLOW_ROWS = [pytest.param(case, verb, id=f"{case.id}-{verb}-flow",
                          marks=[pytest.mark.skip(reason=case.skip)] if case.skip else [])
             for case in CASES for verb in case.verbs if verb in FLOWS
             and not any("predictions" in t for t in case.expect)]  # scoring files is the CLI's alone: no flow


def _flow_call(verb: str, argv: list[str], tmp: Path) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The CLI arguments as the flow's parameters: the spec, the overrides, the parent model when one is named."""
    import importlib

    from oneformer.spec import parse_override

    module, name, parent_key = FLOWS[verb]
    args = argv[1:]
    spec = args[args.index("-e") + 1]
    overrides = dict(parse_override(a) for a in args if "=" in a)
    params: dict[str, Any] = {"spec": spec, "results_dir": overrides.pop("results_dir"),
                              "tracking_config": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}}
    if parent_key is not None:
        parent = str(overrides.pop(parent_key, None) or "") or str(_random_weights(Ctx(tmp, tmp, Path(spec))))
        params["parent"] = parent
        if verb == "quantize" or parent.endswith(".onnx"):
            params["model_kind"] = "onnx" if parent.endswith(".onnx") else "checkpoint"
    return getattr(importlib.import_module(module), name), {**params, "overrides": overrides}


@pytest.mark.parametrize(("case", "verb"), FLOW_ROWS)
def test_bad_input_fails_its_flow(case: Case, verb: str, small_synth: Path, tmp_path: Path, prefect_api: None,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bad input through the Prefect flow the verb's deployment runs: a Failed flow run whose error is the
    CLI's message with no traceback in the run's logs, no results folder or MLflow run when validation finds it,
    nothing registered, and no incomplete entry left in the staging cache."""
    from oneformer.data import cache
    from oneformer.errors import OneFormerError

    c = Ctx(small_synth.parent, tmp_path, small_synth)
    flow, params = _flow_call(verb, _argv(verb, c.spec, case.build(c), c.results), tmp_path)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    lines = LogLines()
    logging.getLogger("prefect").addHandler(lines)  # Prefect's loggers do not propagate to the root
    try:
        state = flow(**params, return_state=True)
    finally:
        logging.getLogger("prefect").removeHandler(lines)
    assert state.is_failed(), state
    assert [line for line in lines.lines if "Traceback" in line] == [], "a user error was logged with a traceback"
    error = state.result(raise_on_failure=False)
    assert isinstance(error, OneFormerError), repr(error)
    for text in case.flow_expect or case.expect:
        assert text.format(tmp=tmp_path, root=c.root) in str(error), str(error)
    assert not (tmp_path / "PWNED").exists(), "loading the checkpoint ran its code"
    assert [e.name for e in cache.entries() if not e.complete] == []
    db = tmp_path / "mlflow.db"
    if case.validation if case.flow_validation is None else case.flow_validation:
        assert not c.results.exists(), f"{c.results} was created before validation failed"
        assert not db.exists(), "an MLflow run was opened before validation failed"
    elif db.exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        assert client.search_registered_models() == []
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs and {r.info.status for r in runs} == {"FAILED"}
        outputs = [p for pattern in ("*.onnx", "metrics.json", "*.engine", "*.pth")
                   for p in c.results.rglob(pattern) if p.parent.name != "parent"]
        assert outputs == [], "a failed flow left outputs behind"


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


def test_tao_error_patterns_that_are_not_errors_here(small_synth: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """TAO's documented failures (../shared/reference) that its users work around by hand just work here: a path one
    level above an extracted archive's wrapper folder, the legacy `fp32` precision, and quantizing a checkpoint whose
    training job folder (label map included) is gone."""
    import shutil

    from oneformer.spec import load_spec

    extracted = tmp_path / "extracted"
    with tarfile.open(small_synth.parent / "train/images.tar.gz") as tar:
        tar.extractall(extracted, filter="data")
    assert [p.name for p in extracted.iterdir()] == ["images"]  # the wrapper folder TAO users trip over
    base = ["-e", str(small_synth), f"results_dir={tmp_path}/r"]
    for extra in ([f"dataset.train.images={extracted}"], ["train.precision=fp32"]):
        with pytest.raises(SystemExit) as done:
            main(["check", "--action", "train", *base, *extra])
        assert done.value.code == 0, capsys.readouterr().err
    assert load_spec(small_synth, ["train.precision=fp32"]).train.precision == "32"

    job = tmp_path / "automl_job"  # a training job's folder: its spec names its own copy of the data
    shutil.copytree(small_synth.parent, job, ignore=shutil.ignore_patterns("results"))
    (job / "spec.yaml").write_text((job / "spec.yaml").read_text().replace(str(small_synth.parent), str(job)))
    checkpoint = _random_weights(Ctx(job, tmp_path, job / "spec.yaml"))
    shutil.rmtree(job)
    with pytest.raises(SystemExit) as done:
        main(["quantize", *base, f"quantize.model_path={checkpoint}", "dataset.label_map=null",
              "export.input_height=64", "export.input_width=64", f"quantize.results_dir={tmp_path}/q"])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    assert (tmp_path / "q" / "model.int8.onnx").is_file()
