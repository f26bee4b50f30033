"""Shared fixtures: an isolated staging cache, the synthetic dataset, and one trained smoke model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("ONEFORMER_CACHE", tempfile.mkdtemp(prefix="oneformer-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, os.cpu_count() or 1))

LEARN_EPOCHS = 24


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip cleanly without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic dataset in TAO's bucket layout; returns its spec.yaml."""
    from oneformer.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), train=64, val=16, size=128, seed=0)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dataset for fast unit tests."""
    from oneformer.data.synth import generate

    return generate(tmp_path_factory.mktemp("small"), train=6, val=4, size=64, seed=1, inference=2, calibration=2)


@pytest.fixture(scope="session")
def trained(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The smoke model trained on the synthetic data (shared by the slow tests)."""
    from oneformer.spec import load_spec
    from oneformer.training.train import train

    results = tmp_path_factory.mktemp("results")
    spec = load_spec(synth, [f"results_dir={results}", f"train.num_epochs={LEARN_EPOCHS}"])
    return {"spec_path": synth, "results": results, **train(spec)}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a boto3 S3 client
    """An S3 server over HTTP on 127.0.0.1 (moto) with an empty bucket `data`; S3 settings in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket="data")
    yield client
    server.stop()



@pytest.fixture(scope="session")
def prefect_api():  # noqa: ANN201
    """Prefect's test harness (a temporary API and database); about 10 s to start, so once per session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder with PostgreSQL's initdb and pg_ctl (PATH, then Debian's /usr/lib/postgresql/<v>/bin)."""
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres_url():  # noqa: ANN201 - a SQLAlchemy URL
    """A real PostgreSQL server on 127.0.0.1 (a fresh cluster on a free port, stopped afterwards), or
    ONEFORMER_TEST_POSTGRES_URL when set; CI fails rather than skips when neither is there."""
    import pwd
    import shutil
    import subprocess

    if os.environ.get("ONEFORMER_TEST_POSTGRES_URL"):
        yield os.environ["ONEFORMER_TEST_POSTGRES_URL"]
        return
    bindir = postgres_bin()
    if bindir is None:
        why = "PostgreSQL's server programs (initdb, pg_ctl) are not installed; `.ci/run` installs Debian's postgresql"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="oneformer-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as an ordinary user owning the folder
        entry = next(e for e in pwd.getpwall() if e.pw_name in ("postgres", "nobody"))
        os.chown(root, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", entry.pw_name, "--"]
    port, data = free_port(), root / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "oneformer", "--auth=trust", "-E", "UTF8")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {root}", "start")
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=oneformer dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE optuna")
        yield f"postgresql://oneformer@127.0.0.1:{port}/optuna"
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
