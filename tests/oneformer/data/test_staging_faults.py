"""Staging through real network faults: a proxy of ours between s3fs and the S3 server resets connections,
answers 503, stalls and cuts bodies short; staging retries and succeeds, or fails clearly in bounded time, and
nothing partial is ever taken from the cache."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from faults import Schedule, fault_proxy

from oneformer.data.staging import stage
from oneformer.errors import StorageError

FILES = 6  # members of the archive; 2 MB each of incompressible bytes, so the archive spans several range reads


def archive_bytes() -> tuple[bytes, dict[str, bytes]]:
    """A .tar.gz of random files (incompressible, so the object is as large as its content)."""
    rng = np.random.default_rng(7)
    files = {f"img_{i}.jpg": rng.bytes(2 * 2**20) for i in range(FILES)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), files


@pytest.fixture
def bucket_object(s3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:  # noqa: ANN001 - boto3 client
    """The archive on the S3 server, and a fresh staging cache."""
    data, files = archive_bytes()
    s3.put_object(Bucket="data", Key="faults/images.tar.gz", Body=data)
    monkeypatch.setenv("ONEFORMER_CACHE", str(tmp_path / "cache"))
    return {"uri": "s3://data/faults/images.tar.gz", "files": files, "cache": tmp_path / "cache"}


def staged_through(schedule: Schedule, uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stage `uri` with every S3 request going through the fault proxy."""
    import os

    with fault_proxy(os.environ["AWS_ENDPOINT_URL"], schedule) as proxy, monkeypatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", proxy)
        return stage(uri, "dataset.train.images")


def whole(folder: Path, files: dict[str, bytes]) -> bool:
    """Every member there, byte for byte."""
    return all((folder / name).is_file() and (folder / name).read_bytes() == data for name, data in files.items())


def test_resets_and_503s_are_retried_and_staging_succeeds(bucket_object: dict,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = Schedule(["reset", "503", "reset", "503"], path_contains="images.tar.gz")
    folder = staged_through(schedule, bucket_object["uri"], monkeypatch)
    assert whole(folder, bucket_object["files"])
    assert [f for _, f in schedule.seen if f != "ok"] == ["reset", "503", "reset", "503"]  # the faults were hit


def test_a_body_cut_short_never_leaves_a_partial_entry(bucket_object: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = Schedule([], path_contains="images.tar.gz", rest="truncate")  # every read of the archive cut
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"dataset.train.images: reading s3://data/faults/images.tar.gz failed "
                                           r"\(.*\)\. The storage endpoint .* nothing partial was kept"):
        staged_through(schedule, bucket_object["uri"], monkeypatch)
    assert time.monotonic() - t0 < 120  # bounded: retries give up
    # the next run, on a healthy network, stages the whole archive: nothing partial was taken as complete
    folder = staged_through(Schedule([]), bucket_object["uri"], monkeypatch)
    assert whole(folder, bucket_object["files"])


def test_one_cut_body_is_retried(bucket_object: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = Schedule(["truncate"], path_contains="images.tar.gz")
    try:
        folder = staged_through(schedule, bucket_object["uri"], monkeypatch)
    except StorageError:  # failing clearly is allowed (the Prefect task retries it); a partial success is not
        folder = staged_through(Schedule([]), bucket_object["uri"], monkeypatch)
    assert whole(folder, bucket_object["files"])
    assert ("truncate" in [f for _, f in schedule.seen])


def test_a_stalled_read_times_out_and_is_retried(bucket_object: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts and then says nothing for 20 s costs one read timeout (2 s here), not the stall."""
    monkeypatch.setenv("ONEFORMER_S3_READ_TIMEOUT", "2")
    schedule = Schedule(["stall"], path_contains="images.tar.gz", stall_s=20)
    t0 = time.monotonic()
    folder = staged_through(schedule, bucket_object["uri"], monkeypatch)
    assert time.monotonic() - t0 < 15
    assert whole(folder, bucket_object["files"])
    assert "stall" in [f for _, f in schedule.seen]


def test_a_server_that_always_stalls_fails_clearly_in_bounded_time(bucket_object: dict,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEFORMER_S3_READ_TIMEOUT", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's own retries inside each of s3fs's: 2, not 5, here
    schedule = Schedule([], path_contains="images.tar.gz", rest="stall", stall_s=30)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"dataset.train.images: reading s3://data/faults/images.tar.gz failed "
                                           r"\(.*[Tt]imeout.*\)\. The storage endpoint did not answer"):
        staged_through(schedule, bucket_object["uri"], monkeypatch)
    assert time.monotonic() - t0 < 120  # every attempt (s3fs and botocore retries) ends at the read timeout; without
    # it each would wait out the 30 s stall: several minutes
    assert not [p for p in bucket_object["cache"].glob("*/.complete")]  # nothing counted as staged


def test_a_bad_timeout_setting_is_a_clear_error(bucket_object: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.errors import DataError

    monkeypatch.setenv("ONEFORMER_S3_READ_TIMEOUT", "soon")
    with pytest.raises(DataError, match="ONEFORMER_S3_READ_TIMEOUT='soon' must be a positive number of seconds"):
        stage(bucket_object["uri"], "dataset.train.images")


def test_missing_credentials_are_named_and_not_retried(bucket_object: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from oneformer.errors import DataError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(bucket_object["cache"] / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(bucket_object["cache"] / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses a filesystem (and its credentials) per option set;
    # an earlier test's instance for this endpoint would otherwise still hold the session's keys
    try:
        with pytest.raises(DataError, match=r"dataset.train.images: reading s3://data/faults/images.tar.gz failed: "
                                            r"no valid S3 credentials .* AwsCredentials block") as err:
            stage(bucket_object["uri"], "dataset.train.images")
        assert not isinstance(err.value, StorageError)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # later tests get an instance with the session's keys again
