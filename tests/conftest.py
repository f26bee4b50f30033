"""Shared fixtures: an isolated staging cache, synthetic datasets, a random-weights checkpoint (seconds), the
trained smoke model (minutes, only where learning is asserted), and real servers started once per session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from servers import moto, postgres, postgres_bin, s3_env

os.environ.setdefault("ONEFORMER_CACHE", tempfile.mkdtemp(prefix="oneformer-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# under pytest-xdist the cores are shared by the workers: one worker's torch threads per share
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)
# and the processes tests start (flow runs on workers, CLIs, servers) take the same share, not every core each:
# OpenMP threads oversubscribed on 2 cores spin and burn the CPU the other worker's tests need
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("ONEFORMER_THREADS", str(THREADS))
# `auto` measures ONNX Runtime only (every pipeline run's registration would compile three OpenVINO models, 8 s
# each time); the tests of OpenVINO and of the choice between backends take the `every_backend` fixture
os.environ.setdefault("ONEFORMER_BACKENDS", "onnxruntime")

LEARN_EPOCHS = 24
LEARN_SIZE = 96


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """Every test starts with this worker's share of the cores, whatever an earlier test in the process set."""
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)


def xdist_group(item: pytest.Item) -> str | None:
    """The worker group of a test that shares an expensive fixture: every user of the trained model on one worker,
    and a module with module-scoped fixtures (a pipeline run, a server and its workers) kept whole."""
    if "trained" in item.fixturenames:
        return "trained"
    info = getattr(item, "_fixtureinfo", None)
    if info and any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
        return item.nodeid.split("::")[0]
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip cleanly without CUDA; under `--dist loadgroup`, tests sharing a fixture share a worker."""
    for item in items:
        if (group := xdist_group(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def every_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` may choose every backend installed here (OpenVINO too), as it does by default outside the tests."""
    monkeypatch.delenv("ONEFORMER_BACKENDS", raising=False)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic dataset in TAO's bucket layout (64 train, 16 eval images of 128 px); returns its spec.yaml."""
    from oneformer.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), train=64, val=16, size=128, seed=0)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dataset (6 train, 4 eval images of 64 px) for fast tests; returns its spec.yaml."""
    from oneformer.data.synth import generate

    return generate(tmp_path_factory.mktemp("small"), train=6, val=4, size=64, seed=1, inference=2, calibration=2)


@pytest.fixture(scope="session")
def random_checkpoint(small_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke network with random weights, saved as a checkpoint on the tiny dataset's label map: for tests of
    file formats, conversions and predictors, never of learning."""
    from oneformer.data.datasets import read_labels
    from oneformer.model.checkpoint import save_weights
    from oneformer.model.network import build_network, hf_config
    from oneformer.spec import load_spec

    torch.manual_seed(0)
    spec = load_spec(small_synth)
    labels = read_labels(spec)
    net = build_network(hf_config(spec.model, labels.names))
    return save_weights(tmp_path_factory.mktemp("random") / "random.pth", net, labels, spec.model_dump(mode="json"))


@pytest.fixture(scope="session")
def random_models(small_synth: Path, random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The random checkpoint quantized at 64 px by the quantize action (so exported to ONNX first, then to INT8):
    the three model files and the action's report."""
    from oneformer.actions.quantize import quantize
    from oneformer.spec import load_spec

    out = tmp_path_factory.mktemp("random_models")
    spec = load_spec(small_synth, [f"results_dir={out}", f"quantize.model_path={random_checkpoint}",
                                   "export.input_height=64", "export.input_width=64", "quantize.min_agreement=0"])
    report = quantize(spec)
    folder = spec.action_dir("quantize")
    return {"checkpoint": random_checkpoint, "onnx": folder / "model.onnx", "int8": folder / "model.int8.onnx",
            "report": report, "folder": folder}


def at_size(spec_path: Path, size: int) -> Path:
    """The spec at `spec_path` trained, evaluated and exported at `size` px (its augmentation scaled from its own
    dataset.image_size), written beside it."""
    import yaml

    spec = yaml.safe_load(spec_path.read_text())
    dataset = spec["dataset"]
    aug, scale = dataset["augmentation"], size / dataset["image_size"]
    dataset["image_size"] = size
    aug.update({"train_min_size": [round(s * scale) for s in aug["train_min_size"]],
                "train_max_size": round(aug["train_max_size"] * scale), "train_crop_size": [size, size],
                "test_min_size": size, "test_max_size": round(aug["test_max_size"] * scale)})
    spec["model"]["backbone"]["swin"]["pretrain_img_size"] = size
    spec["inference"]["image_size"] = [size, size]
    spec["export"].update({"input_height": size, "input_width": size})
    out = spec_path.with_name(f"spec_{size}px.yaml")
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


@pytest.fixture(scope="session")
def learn_spec(synth: Path) -> Path:
    """The synthetic data's spec at LEARN_SIZE px, for the tests that assert learning: at 96 px the smoke model
    learns as well in 24 epochs as at 128 px (best mIoU 0.68-0.88 over three seeds against 0.62 at 128 px, on one
    AVX2 machine) in three quarters of the time."""
    return at_size(synth, LEARN_SIZE)


@pytest.fixture(scope="session")
def trained(learn_spec: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The smoke model trained for 24 epochs on the synthetic data (shared by the slow tests that need learning)."""
    from oneformer.actions.train import train
    from oneformer.spec import load_spec

    results = tmp_path_factory.mktemp("results")
    spec = load_spec(learn_spec, [f"results_dir={results}", f"train.num_epochs={LEARN_EPOCHS}"])
    return {"spec_path": learn_spec, "results": results, **train(spec)}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One S3 server over HTTP on 127.0.0.1 for the whole session."""
    with moto() as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a boto3 S3 client
    """An empty bucket `data` on the session's S3 server, with S3 settings in the environment; emptied afterwards."""
    import boto3

    for k, v in s3_env(moto_endpoint).items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket="data")
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="data"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket="data", Key=obj["Key"])
    client.delete_bucket(Bucket="data")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Prefect's test harness (a temporary API and database); about 10 s to start, so once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1 (a fresh cluster on a free port, stopped afterwards), or
    ONEFORMER_TEST_POSTGRES_URL when set; CI fails rather than skips when neither is there."""
    if os.environ.get("ONEFORMER_TEST_POSTGRES_URL"):
        yield os.environ["ONEFORMER_TEST_POSTGRES_URL"]
        return
    bindir = postgres_bin()
    if bindir is None:
        why = "PostgreSQL's server programs (initdb, pg_ctl) are not installed; `.ci/run` installs Debian's postgresql"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    with postgres(bindir) as url:
        yield url
