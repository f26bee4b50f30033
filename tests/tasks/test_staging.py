"""The stage-data task against a real S3 server: retries while storage is down, never for a user mistake."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from prefect import flow
from prefect.client.orchestration import get_client

from oneformer.errors import DataError
from tasks.sources import DataSources
from tasks.staging import stage_data


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("images/a.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"jpg"))
    return buf.getvalue()


def _serve(port: int, objects: dict[str, bytes]) -> ThreadedMotoServer:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    client.create_bucket(Bucket="data")
    for key, body in objects.items():
        client.put_object(Bucket="data", Key=key, Body=body)
    return server


@flow
def stage_flow(action: str, sources: DataSources) -> dict:
    """The task's outcome as plain values (a failed state returned from a flow would fail the flow)."""
    state = stage_data(action, sources, return_state=True)
    with get_client(sync_client=True) as client:
        runs = client.read_task_run(state.state_details.task_run_id).run_count
    try:
        return {"staged": state.result(), "runs": runs}
    except DataError as exc:
        return {"error": str(exc), "runs": runs}


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> int:
    probe = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    probe.start()
    port = probe.get_host_and_port()[1]
    probe.stop()
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k",
                 "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                 "ONEFORMER_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    return port


def test_stage_retries_until_storage_is_back(prefect_api, s3_env: int) -> None:  # noqa: ANN001
    objects = {"d/calibration/images.tar.gz": _archive()}
    servers: list[ThreadedMotoServer] = []
    later = threading.Timer(6.0, lambda: servers.append(_serve(s3_env, objects)))  # down for 6 s
    later.start()
    try:
        out = stage_flow("quantize", DataSources(calibration="s3://data/d/calibration"))
    finally:
        later.join()
        for s in servers:
            s.stop()
    staged = out["staged"]["dataset.quant_calibration_dataset.images_dir"]
    assert (Path(staged) / "a.jpg").read_bytes() == b"jpg"
    assert out["runs"] >= 2  # the first attempt met a dead endpoint and was retried


def test_missing_object_fails_at_once_naming_uri_and_key(prefect_api, s3_env: int) -> None:  # noqa: ANN001
    server = _serve(s3_env, {})
    try:
        t0 = time.monotonic()
        out = stage_flow("quantize", DataSources(calibration="s3://data/nothing"))
    finally:
        server.stop()
    assert out["runs"] == 1 and time.monotonic() - t0 < 20  # a user mistake is not retried
    assert out["error"].startswith("dataset.quant_calibration_dataset.images_dir: s3://data/nothing/images.tar.gz "
                                   "does not exist")
