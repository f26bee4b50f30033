"""Redaction (seconds): URL passwords and encryption_key are masked in every written copy of a spec, checkpoint and
status line, while the spec in memory keeps them; a checkpoint with a masked spec still loads and predicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from oneformer.artifacts import StatusWriter, read_status
from oneformer.secrets import MASK, redact, redact_text, redact_url, secrets_in
from oneformer.spec import dump_spec, load_spec, public_dict

PASSWORD = "pw-unit-4c1d"
KEY = "enc-unit-9a8b"


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql://user:{PASSWORD}@db:5432/optuna", "postgresql://user:***@db:5432/optuna"),
    (f"postgresql+psycopg://user:{PASSWORD}@db/optuna", "postgresql+psycopg://user:***@db/optuna"),
    (f"postgresql+psycopg://user:a/b{PASSWORD}@db/optuna", "postgresql+psycopg://user:***@db/optuna"),  # a '/'
    (f"postgresql://db/optuna?password={PASSWORD}&sslmode=require", "postgresql://db/optuna?password=%2A%2A%2A&"
                                                                     "sslmode=require"),
    (f"http://user:{PASSWORD}@mlflow:5000/", "http://user:***@mlflow:5000/"),
    (f"https://user:{PASSWORD}@mlflow.example.com/path?x=1", "https://user:***@mlflow.example.com/path?x=1"),
    (f"s3://AKIAKEY:{PASSWORD}@bucket/data", "s3://***@bucket/data"),  # fsspec's key:secret@bucket
    ("postgresql://user@db:5432/optuna", "postgresql://user@db:5432/optuna"),  # nothing to hide: unchanged
    ("sqlite:////tmp/a@b/optuna.db", "sqlite:////tmp/a@b/optuna.db"),
    ("s3://bucket/images@2x.tar.gz", "s3://bucket/images@2x.tar.gz"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_urls_lose_their_password_and_nothing_else(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert PASSWORD not in redact_text(f"cannot open {url}: refused")


def test_the_written_spec_is_masked_and_the_live_spec_keeps_its_values() -> None:
    storage = f"postgresql://oneformer:{PASSWORD}@127.0.0.1:5432/optuna"
    spec = load_spec(None, {"encryption_key": KEY, "automl.storage": storage})
    written = public_dict(spec)
    assert written["encryption_key"] == MASK
    assert written["automl"]["storage"] == "postgresql://oneformer:***@127.0.0.1:5432/optuna"
    text = dump_spec(spec)
    assert PASSWORD not in text and KEY not in text
    assert yaml.safe_load(text)["automl"]["storage"] == written["automl"]["storage"]
    assert spec.encryption_key == KEY and spec.automl.storage == storage  # the study still connects with it
    assert public_dict(load_spec())["encryption_key"] is None  # an unset key stays unset, not "***"
    assert redact({"a": [{"encryption_key": KEY}], "b": (f"http://u:{PASSWORD}@h",)}) == \
        {"a": [{"encryption_key": MASK}], "b": ["http://u:***@h"]}


def test_secrets_are_found_by_key_for_the_parameter_check() -> None:
    found = secrets_in({"overrides": {"encryption_key": KEY, "automl.storage": f"postgresql://u:{PASSWORD}@h/db",
                                      "train.encryption_key": None, "dataset.train.images": "s3://b/train"},
                        "tracking_config": {"tracking_uri": f"http://u:{PASSWORD}@mlflow"},
                        "sources": {"train": "s3://b/train", "eval": None}, "parent": f"s3://K:{PASSWORD}@b/m.pth"})
    assert found == ["overrides.encryption_key", "overrides.automl.storage", "tracking_config.tracking_uri", "parent"]
    assert secrets_in({"tracking_config": {"tracking_uri": "postgresql://u@h/mlflow"}}) == []


def test_status_lines_mask_passwords_in_messages(tmp_path: Path) -> None:
    StatusWriter(tmp_path).write("FAILURE", f"OperationalError: postgresql://u:{PASSWORD}@h/db refused", epoch=1)
    assert PASSWORD not in (tmp_path / "status.json").read_text()
    assert read_status(tmp_path)[0]["message"] == "OperationalError: postgresql://u:***@h/db refused"


def test_a_checkpoint_holds_the_masked_spec_and_still_predicts(small_synth: Path, tmp_path: Path) -> None:
    from oneformer.data.datasets import read_labels
    from oneformer.model.checkpoint import read_checkpoint, save_weights
    from oneformer.model.network import build_network, hf_config
    from oneformer.runtime.torch import TorchPredictor

    spec = load_spec(small_synth, {"encryption_key": KEY, "automl.storage": f"postgresql://u:{PASSWORD}@h/db"})
    labels = read_labels(spec)
    net = build_network(hf_config(spec.model, labels.names))
    path = save_weights(tmp_path / "model.pth", net, labels, spec.model_dump(mode="json"))  # the raw dump, even

    raw = path.read_bytes()  # an uncompressed zip: a string in it would be readable as it is
    assert KEY.encode() not in raw and PASSWORD.encode() not in raw
    ckpt = read_checkpoint(path)
    assert ckpt.spec["encryption_key"] == MASK and ckpt.spec["automl"]["storage"] == "postgresql://u:***@h/db"
    out = TorchPredictor(path, "cpu")(torch.zeros(1, 3, 64, 64), "semantic")
    assert out.scores.shape[:2] == (1, labels.num_classes)
