"""The stage-data task against a real S3 server: retries while storage is down, never for a user mistake, and
S3 settings from a Secret or an AwsCredentials block that never reach the process environment or the logs."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from uuid import UUID

import pytest
from logs import LogLines
from prefect import flow
from prefect.client.orchestration import get_client
from servers import free_port, moto, s3_env

from oneformer.errors import DataError
from oneformer.spec import ExperimentSpec, load_spec
from tasks.parents import resolve_parent
from tasks.sources import DataSources
from tasks.staging import s3_options, stage_data


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("images/a.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"jpg"))
    return buf.getvalue()


def run_count(task_run_id: UUID) -> int:
    """How often the API saw a task run start, once it has recorded the run's final state (it records runs from
    events a moment after the task returns: on a loaded machine the run itself may not be there yet)."""
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for _ in range(100):
            try:
                task_run = client.read_task_run(task_run_id)
            except ObjectNotFound:
                task_run = None
            if task_run is not None and task_run.state is not None and task_run.state.is_final():
                return task_run.run_count
            time.sleep(0.1)
    raise TimeoutError(f"task run {task_run_id} has no final state in the API after 10 s")


@flow
def stage_flow(action: str, sources: DataSources, block: str | None = None, spec: ExperimentSpec | None = None) -> dict:
    """The task's outcome as plain values (a failed state returned from a flow would fail the flow)."""
    state = stage_data(action, sources, block, spec, return_state=True)
    runs = run_count(state.state_details.task_run_id)
    try:
        return {"staged": state.result(), "runs": runs}
    except DataError as exc:
        return {"error": str(exc), "runs": runs}


class RetryWatch(logging.Handler):
    """Sets `event` when Prefect logs that a failed task run will be retried."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if "will start" in record.getMessage() and "Retry" in record.getMessage():
            self.event.set()


@flow
def parent_flow(parent: str, dest: str, block: str) -> str:
    """resolve_parent for an S3 parent, in a flow run as the action flows call it."""
    return resolve_parent(parent, "checkpoint", f"sqlite:///{dest}/mlflow.db", dest, block)


def test_stage_retries_until_storage_is_back(prefect_api, s3, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                             tmp_path: Path) -> None:
    # moto's servers in one process share one store: the object is there before its new endpoint comes up
    s3.put_object(Bucket="data", Key="d/calibration/images.tar.gz", Body=_archive())
    port = free_port()
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1",
                 "ONEFORMER_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    failed = threading.Event()  # the endpoint comes up once Prefect has scheduled a retry, however slow the start
    retries = RetryWatch(failed)
    logging.getLogger("prefect").addHandler(retries)
    with ExitStack() as stack:
        later = threading.Thread(target=lambda: failed.wait(120) and stack.enter_context(moto(port)))
        later.start()
        try:
            out = stage_flow("quantize", DataSources(calibration="s3://data/d/calibration"))
        finally:
            failed.set()
            later.join()
            logging.getLogger("prefect").removeHandler(retries)
    staged = out["staged"]["dataset.quant_calibration_dataset.images_dir"]
    assert (Path(staged) / "a.jpg").read_bytes() == b"jpg"
    assert out["runs"] >= 2  # the first attempt met a dead endpoint and was retried


def test_missing_object_fails_at_once_naming_uri_and_key(prefect_api, s3, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    t0 = time.monotonic()
    out = stage_flow("quantize", DataSources(calibration="s3://data/nothing"))
    assert out["runs"] == 1 and time.monotonic() - t0 < 20  # a user mistake is not retried
    assert out["error"].startswith("dataset.quant_calibration_dataset.images_dir: s3://data/nothing/images.tar.gz "
                                   "does not exist")


def block_only(s3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:  # noqa: ANN001 - boto3 client
    """A calibration archive on S3 with no S3 settings left in the environment (only a block can reach it), and a
    fresh staging cache; returns the endpoint for the block."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    s3.put_object(Bucket="data", Key="d/calibration/images.tar.gz", Body=_archive())
    for key in s3_env(endpoint):
        monkeypatch.delenv(key)
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    return endpoint


def test_secret_block_settings_stage_without_touching_the_environment(prefect_api, s3,  # noqa: ANN001
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from prefect.blocks.system import Secret

    endpoint = block_only(s3, monkeypatch, tmp_path)
    Secret(value=json.dumps({"endpoint_url": endpoint, "region": "us-east-1", "access_key_id": "block-key",
                             "secret_access_key": "block-secret"})).save("s3-settings", overwrite=True)
    before = dict(os.environ)

    out = stage_flow("quantize", DataSources(calibration="s3://data/d/calibration"), "s3-settings")

    staged = out["staged"]["dataset.quant_calibration_dataset.images_dir"]
    assert (Path(staged) / "a.jpg").read_bytes() == b"jpg"
    in_spec = load_spec(None, {"dataset.quant_calibration_dataset.images_dir": "s3://data/d/calibration/images.tar.gz"})
    out = stage_flow("quantize", DataSources(), "s3-settings", in_spec)  # an s3:// path the spec itself names
    assert out["staged"] == {"dataset.quant_calibration_dataset.images_dir": staged}
    s3.put_object(Bucket="data", Key="models/model.pth", Body=b"weights")
    parent = parent_flow("s3://data/models/model.pth", str(tmp_path / "parent"), "s3-settings")
    assert Path(parent).read_bytes() == b"weights"
    assert dict(os.environ) == before  # nothing was left for the next flow run in this process to inherit
    assert s3_options("s3-settings") == {"key": "block-key", "secret": "block-secret", "client_kwargs": {
        "endpoint_url": endpoint, "region_name": "us-east-1"}}
    Secret(value=json.dumps({"bucket": "x"})).save("s3-bad", overwrite=True)
    with pytest.raises(ValueError, match=r"Secret block 's3-bad': unknown keys \['bucket'\]"):
        s3_options("s3-bad")


def test_aws_credentials_block_stages_and_its_keys_are_never_logged(prefect_api, s3,  # noqa: ANN001
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    from prefect_aws import AwsClientParameters, AwsCredentials

    endpoint = block_only(s3, monkeypatch, tmp_path)
    key_id, secret = "AKIASTAGINGKEY4F2E", "staging-secret-8d7c6b5a"
    AwsCredentials(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1",
                   aws_client_parameters=AwsClientParameters(endpoint_url=endpoint)).save("s3-creds", overwrite=True)
    lines = LogLines()
    logging.getLogger().addHandler(lines)
    try:
        out = stage_flow("quantize", DataSources(calibration="s3://data/d/calibration"), "aws-credentials/s3-creds")
    finally:
        logging.getLogger().removeHandler(lines)

    staged = out["staged"]["dataset.quant_calibration_dataset.images_dir"]
    assert (Path(staged) / "a.jpg").read_bytes() == b"jpg"
    assert any("stage quantize data" in line or "s3://data/d/calibration" in line for line in lines.lines)
    assert not [line for line in lines.lines if key_id in line or secret in line]
    assert s3_options("aws-credentials/s3-creds") == {"key": key_id, "secret": secret, "client_kwargs": {
        "region_name": "us-east-1", "endpoint_url": endpoint}}
    with pytest.raises(ValueError, match="s3_secret_block aws-credentials/nothing: "):
        s3_options("aws-credentials/nothing")
    with pytest.raises(ValueError, match=r"name an AwsCredentials block as aws-credentials/<name>"):
        s3_options("gcp-credentials/x")


def test_empty_archive_fails_at_once_naming_key_and_uri(prefect_api, s3, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    s3.upload_file(str(tmp_path / "empty.tar.gz"), "data", "d/calibration/images.tar.gz")
    out = stage_flow("quantize", DataSources(calibration="s3://data/d/calibration"))
    assert out["runs"] == 1  # a user mistake is not retried
    assert out["error"].startswith("dataset.quant_calibration_dataset.images_dir: "
                                   "s3://data/d/calibration/images.tar.gz is an empty archive")
    assert not list((tmp_path / "cache").rglob(".complete"))  # nothing marked complete, so the next run looks again


def test_an_override_naming_a_data_file_wins_over_the_bucket_layout(prefect_api, tmp_path: Path) -> None:  # noqa: ANN001
    """`--train data/train dataset.train.annotations=other.json`: the run reads other.json, logs that it does, and
    the data fingerprint (which keys the study and the stage cache's lineage) follows the file really read."""
    from tasks.staging import data_digest

    bucket = tmp_path / "train"
    bucket.mkdir()
    for name in ("images.tar.gz", "images_panoptic.tar.gz"):
        (bucket / name).write_bytes(_archive())
    (bucket / "annotations.json").write_text('{"images": []}')
    (bucket / "label_map.json").write_text("[]")
    other = tmp_path / "other.json"
    other.write_text('{"images": [], "note": "the one the user named"}')
    sources = DataSources(train=str(bucket))

    @flow
    def run(given: dict[str, str] | None) -> tuple[dict, dict]:
        return stage_data("train", sources, None, None, given), data_digest("train", sources, None, given)

    lines = LogLines()
    logging.getLogger().addHandler(lines)
    try:
        staged, digest = run({"dataset.train.annotations": str(other)})
    finally:
        logging.getLogger().removeHandler(lines)
    assert staged["dataset.train.annotations"] == str(other)
    assert any("the override" in line and "instead of the train source's file" in line for line in lines.lines)
    plain_staged, plain_digest = run(None)
    assert plain_staged["dataset.train.annotations"] == str(bucket / "annotations.json")
    assert digest["all"] != plain_digest["all"] and digest["train"] != plain_digest["train"]
