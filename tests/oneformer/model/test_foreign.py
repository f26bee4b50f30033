"""Checkpoints written by other tools (TAO's Lightning .pth, SHI-Labs / Detectron2 .pth and .pkl, a transformers
state dict) read into the spec's network: the same outputs as the network they were written from, none of the
file's code run, and missing, unexpected or mis-shaped tensors named with the spec keys to set."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from oneformer.data.datasets import read_labels
from oneformer.data.tokenizer import TextTable
from oneformer.errors import CheckpointError
from oneformer.model.checkpoint import safe_load
from oneformer.model.detectron2_names import from_detectron2, to_detectron2
from oneformer.model.foreign import read_any
from oneformer.model.network import build_network, hf_config, load_network, set_training_mode
from oneformer.model.pretrained import load_pretrained
from oneformer.model.unpickle import Placeholder, load_restricted, restricted_load
from oneformer.presets import preset_path
from oneformer.runtime.torch import TorchPredictor
from oneformer.spec import ExperimentSpec, load_spec

RAN: list[str] = []  # code of a test file's own classes that ran while loading: must stay empty
FORMATS = ("detectron2.pkl", "shi_labs.pth", "tao.pth", "transformers.pth")


def tripwire(what: str) -> None:
    """What Trap's pickle asks the loader to call."""
    RAN.append(what)


class TaoConfig:
    """Stands for TAO's OmegaConf config: a class of the writing tool, which a weights-only load refuses."""

    def __init__(self, **values: object) -> None:
        self.values = values

    def __setstate__(self, state: dict) -> None:
        RAN.append("TaoConfig.__setstate__")
        self.__dict__.update(state)


class Trap:
    """An object whose unpickling calls tripwire (its __reduce__ runs when written, the call when read)."""

    def __reduce__(self) -> tuple:
        return (tripwire, ("Trap.__reduce__",))


class Shell:
    """A hostile object: unpickled by plain pickle, it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def tiny_spec(folder: Path, *overrides: str) -> ExperimentSpec:
    """The smoke network on a label map of six classes written into `folder`."""
    label_map = folder / "label_map.json"
    if not label_map.exists():
        label_map.write_text(json.dumps([{"id": i + 1, "name": n, "isthing": i >= 3} for i, n in enumerate("abcdef")]))
    return load_spec(preset_path("smoke"), [f"dataset.label_map={label_map}", *overrides])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random smoke network, its outputs on one input, and its weights written in each foreign format."""
    folder = tmp_path_factory.mktemp("foreign")
    spec = tiny_spec(folder)
    torch.manual_seed(0)
    net = build_network(hf_config(spec.model, read_labels(spec).names))
    set_training_mode(net, False)
    pixels = torch.randn(1, 3, 64, 64)
    text = TextTable(list("abcdef"), net.config.task_seq_len, net.config.text_encoder_context_length)
    with torch.no_grad():
        out = net(pixel_values=pixels, task_inputs=text.task_ids["panoptic"][None])
    state = net.state_dict()
    d2 = to_detectron2(state)
    files = {name: folder / name for name in FORMATS}
    with files["detectron2.pkl"].open("wb") as f:  # Detectron2's own layout; protocol 2 writes bytes via _codecs
        pickle.dump({"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "test",
                     "matching_heuristics": True}, f, protocol=2)
    torch.save({"model": d2, "iteration": 1234}, files["shi_labs.pth"])
    moments = torch.arange(6, dtype=torch.float64)  # Lightning's other entries: views, 0-d and half tensors
    torch.save({"state_dict": {f"model.{k}": v for k, v in d2.items()}, "epoch": 7, "global_step": 700,
                "pytorch-lightning_version": "2.1.0",
                "optimizer_states": [{"state": {0: {"exp_avg": moments[1:3], "exp_avg_sq": moments[4:]}}}],
                "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5, dtype=torch.float16)}},
                "hyper_parameters": {"experiment_spec": TaoConfig(label_map="/results/label_map.json"),
                                     "trap": Trap()}}, files["tao.pth"])
    torch.save(state, files["transformers.pth"])
    return {"spec": spec, "state": state, "d2": d2, "pixels": pixels, "text": text, "files": files, "folder": folder,
            "class_logits": out.class_queries_logits, "mask_logits": out.masks_queries_logits}


def test_detectron2_names_round_trip_and_are_shi_labs_module_paths(source: dict) -> None:
    d2, state = source["d2"], source["state"]
    for name in ("backbone.layers.0.blocks.0.attn.qkv.weight", "backbone.norm3.weight",
                 "sem_seg_head.pixel_decoder.adapter_1.norm.weight", "sem_seg_head.pixel_decoder.mask_features.weight",
                 "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.norm1.weight",
                 "sem_seg_head.predictor.transformer_self_attention_layers.0.self_attn.in_proj_weight",
                 "sem_seg_head.predictor.class_transformer.decoder.layers.0.multihead_attn.in_proj_weight",
                 "sem_seg_head.predictor.query_embed.weight", "task_mlp.layers.1.weight",
                 "text_encoder.transformer.resblocks.0.mlp.c_fc.weight", "text_projector.layers.0.weight",
                 "prompt_ctx.weight"):
        assert name in d2, name
    back = from_detectron2(d2)
    assert back.unmapped == [] and back.ignored == []
    lacking = sorted(set(state) - set(back.tensors))
    assert lacking == [f"model.pixel_level_module.encoder.swin.layernorm.{k}" for k in ("bias", "weight")]
    assert all(torch.equal(back.tensors[k], v) for k, v in state.items() if k in back.tensors)


@pytest.mark.parametrize("name", FORMATS)
def test_foreign_checkpoint_gives_the_source_networks_outputs(source: dict, name: str) -> None:
    path, spec = source["files"][name], source["spec"]
    ckpt = read_any(path, "evaluate.checkpoint", spec=spec)
    assert ckpt.labels.names == list("abcdef") and ckpt.spec["model"]["sem_seg_head"]["num_classes"] == 6
    assert (ckpt.epoch, ckpt.step) == {"tao.pth": (7, 700), "shi_labs.pth": (0, 1234)}.get(name, (0, 0))
    net = load_network(ckpt)
    with torch.no_grad():
        out = net(pixel_values=source["pixels"], task_inputs=source["text"].task_ids["panoptic"][None])
    torch.testing.assert_close(out.class_queries_logits, source["class_logits"])
    torch.testing.assert_close(out.masks_queries_logits, source["mask_logits"])
    answer = TorchPredictor(path, "cpu", spec)(source["pixels"], "panoptic")
    torch.testing.assert_close(answer.class_logits, source["class_logits"])
    torch.testing.assert_close(answer.mask_logits, source["mask_logits"])
    assert RAN == []


def test_tao_config_objects_are_stood_in_for_and_none_of_their_code_runs(source: dict) -> None:
    path = source["files"]["tao.pth"]
    with pytest.raises(CheckpointError, match="is not a checkpoint of ours .*TaoConfig object"):
        safe_load(path, "evaluate.checkpoint")  # what made the restricted reader necessary
    raw = load_restricted(path)
    config, trap = raw["hyper_parameters"]["experiment_spec"], raw["hyper_parameters"]["trap"]
    assert isinstance(config, Placeholder) and config.global_name.endswith("test_foreign.TaoConfig")
    assert config.state == {"values": {"label_map": "/results/label_map.json"}}
    assert isinstance(trap, Placeholder) and trap.global_name.endswith("test_foreign.tripwire")
    assert trap.args == ("Trap.__reduce__",)
    assert RAN == []  # neither TaoConfig.__setstate__ nor tripwire ran
    state = raw["optimizer_states"][0]["state"][0]  # the zip's storages: offsets, dtypes and 0-d tensors kept
    assert state["exp_avg"].tolist() == [1.0, 2.0] and state["exp_avg_sq"].tolist() == [4.0, 5.0]
    assert state["exp_avg"].dtype == torch.float64
    score = raw["callbacks"]["ModelCheckpoint"]["best_model_score"]
    assert score.dtype == torch.float16 and score.shape == () and float(score) == 0.5


def test_a_hostile_pickle_runs_nothing(source: dict, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    raw = restricted_load(io.BytesIO(pickle.dumps({"a": Shell(marker), "b": _Eval()})))
    assert isinstance(raw["a"], Placeholder) and raw["a"].global_name in ("posix.system", "os.system")
    assert raw["b"].global_name == "builtins.eval"
    pkl = tmp_path / "hostile.pkl"
    pkl.write_bytes(pickle.dumps({"model": {}, "payload": Shell(marker)}))
    with pytest.raises(CheckpointError, match=r"inference.checkpoint: .*hostile.pkl is not a checkpoint of ours.*"
                                              r"holds no OneFormer weights"):
        read_any(pkl, "inference.checkpoint", spec=source["spec"])
    pth = tmp_path / "hostile.pth"  # real weights next to the payload: they load, the payload is stood in for
    torch.save({"model": source["d2"], "payload": Shell(marker)}, pth)
    assert read_any(pth, "inference.checkpoint", spec=source["spec"]).state_dict
    assert not marker.exists()


class _Eval:
    """A pickle that would call builtins.eval."""

    def __reduce__(self) -> tuple:
        return (eval, ("1 + 1",))


def test_missing_and_unexpected_tensors_are_reported_by_name(source: dict, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    d2 = dict(source["d2"])
    d2.pop("sem_seg_head.predictor.class_embed.bias")
    d2["sem_seg_head.predictor.bogus.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save({"model": d2}, path)
    with caplog.at_level(logging.WARNING, logger="oneformer.model.foreign"):
        ckpt = read_any(path, "train.pretrained_model", spec=source["spec"])
    assert "1 missing" in caplog.text and "model.transformer_module.decoder.class_embed.bias" in caplog.text
    assert "1 unexpected" in caplog.text and "sem_seg_head.predictor.bogus.weight" in caplog.text
    assert "model.transformer_module.decoder.class_embed.bias" in ckpt.missing
    load_network(ckpt)  # what the file lacked was initialized: the network loads whole
    with pytest.raises(CheckpointError, match="evaluate.checkpoint: .*partial.pth .*lacks 1 tensors the network "
                                              "predicts with .*class_embed.bias.*would be random"):
        read_any(path, "evaluate.checkpoint", spec=source["spec"])  # to predict with, nothing may be random


@pytest.mark.parametrize(("override", "named"), [
    ("model.sem_seg_head.num_classes=8", "model.sem_seg_head.num_classes=6 (the spec has 8)"),
    ("model.backbone.swin.embed_dim=48", "model.backbone.swin.embed_dim=32 (the spec has 48)"),
    ("model.backbone.swin.depths=[1,1,1,1]", "model.backbone.swin.depths=[1, 1, 2, 1] (the spec has [1, 1, 1, 1])"),
])
def test_another_network_is_an_error_naming_the_spec_key(source: dict, override: str, named: str) -> None:
    spec = tiny_spec(source["folder"], override)
    with pytest.raises(CheckpointError, match="export.checkpoint: .*shi_labs.pth .*holds another network") as err:
        read_any(source["files"]["shi_labs.pth"], "export.checkpoint", spec=spec)
    assert named in str(err.value)


def test_too_little_or_nothing_recognized_is_an_error(source: dict, tmp_path: Path) -> None:
    few = tmp_path / "few.pth"
    torch.save({"model": {k: v for k, v in source["d2"].items() if k.startswith("task_mlp.")}}, few)
    with pytest.raises(CheckpointError, match=r"train.pretrained_model: .*few.pth \(Detectron2 checkpoint\): only 4 "
                                              r"of \d+ tensors"):
        read_any(few, "train.pretrained_model", spec=source["spec"])
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"model.w": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="other.pth is not a checkpoint of ours, and .* holds no OneFormer"):
        read_any(other, "train.pretrained_model", spec=source["spec"])
    encrypted = tmp_path / "encrypted.pth"
    torch.save({"state_dict": b"\x00" * 8, "state_dict_encrypted": "aes"}, encrypted)
    with pytest.raises(CheckpointError, match="encrypted weights"):
        read_any(encrypted, "evaluate.checkpoint", spec=source["spec"])


def test_without_a_spec_a_foreign_checkpoint_is_refused_as_before(source: dict) -> None:
    with pytest.raises(CheckpointError, match="evaluate.checkpoint: .*shi_labs.pth is not a oneformer checkpoint"):
        read_any(source["files"]["shi_labs.pth"], "evaluate.checkpoint")
    with pytest.raises(CheckpointError, match="tao.pth is not a checkpoint of ours"):
        read_any(source["files"]["tao.pth"], "evaluate.checkpoint")


def test_pretrained_model_from_a_tao_checkpoint(source: dict) -> None:
    spec = source["spec"]
    torch.manual_seed(1)
    net = build_network(hf_config(spec.model, read_labels(spec).names))
    own_norm = net.state_dict()["model.pixel_level_module.encoder.swin.layernorm.weight"].clone()
    load_pretrained(net, str(source["files"]["tao.pth"]), spec)
    mine = net.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in source["state"].items() if ".swin.layernorm." not in k)
    assert torch.equal(mine["model.pixel_level_module.encoder.swin.layernorm.weight"], own_norm)  # kept its own


def test_pretrained_model_of_other_classes_initializes_all_but_the_class_head(source: dict,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    spec = tiny_spec(source["folder"], "model.sem_seg_head.num_classes=8")  # fine-tuning for another class count
    net = build_network(hf_config(spec.model, read_labels(spec).names))
    head = "model.transformer_module.decoder.class_embed.weight"
    with caplog.at_level(logging.WARNING, logger="oneformer.model.foreign"):
        load_pretrained(net, str(source["files"]["detectron2.pkl"]), spec)
    assert "model.sem_seg_head.num_classes=6 (the spec has 8)" in caplog.text and head in caplog.text
    mine = net.state_dict()
    assert mine[head].shape == (9, 64)
    assert all(torch.equal(mine[k], v) for k, v in source["state"].items()
               if mine[k].shape == v.shape and ".swin.layernorm." not in k and k != "criterion.empty_weight")
