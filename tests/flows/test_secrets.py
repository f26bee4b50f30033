"""No secret in any output. A flow parameter holding one is refused and masked in Prefect (seconds); then the
pipeline runs with a recognisable value of every kind (S3 keys in an AwsCredentials block, data on S3 served on
127.0.0.1, a PostgreSQL study and MLflow store whose URLs hold a password, TAO's encryption_key) and every byte it
wrote is scanned: the results folder (checkpoints and zip/gzip members too), MLflow's database and artifacts,
Prefect's database and result storage, PostgreSQL's databases, and the logs."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from logs import LogLines
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from servers import postgres, postgres_bin, s3_env

from flows.params import SecretParameterError, Tracking
from flows.pipeline import main, pipeline
from tasks.automl import with_driver
from tasks.sources import DataSources

KEY_ID = "AKIAONEFORMER7Q2XKEY"  # recognisable values of each kind: none may appear in anything written
SECRET_KEY = "aws-secret-9f8e7d6c-never-written"
PG_PASSWORD = "pg-pass-5b4a3c2d-never-written"
ENCRYPTION_KEY = "tlt-encryption-3e2d1c-never-written"
SECRETS = (KEY_ID, SECRET_KEY, PG_PASSWORD, ENCRYPTION_KEY)
REFUSED = "refused-pw-2b3c4d"


# ----------------------------------------------------------------------------- refusal (seconds)
def _refused(call: dict, flow_name: str = "pipeline") -> tuple[str, dict, list[str], str]:
    """Run a flow with a secret parameter; its error, the parameters and logs Prefect kept, its state message."""
    from flows.evaluate import evaluate_flow
    from flows.train import train_flow

    flow = {"pipeline": pipeline, "evaluate": evaluate_flow, "train": train_flow}[flow_name]
    state = flow(**call, return_state=True)
    assert state.is_failed()
    with pytest.raises(SecretParameterError) as err:
        state.result()
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as c:
        run = c.read_flow_run(run_id)
        logs = [log.message for log in c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]
    return str(err.value), run.parameters, logs, f"{run.name} {run.state.message}"


@pytest.mark.parametrize(("flow_name", "call", "key", "masked"), [
    ("pipeline", {"overrides": {"automl.storage": f"postgresql://u:{REFUSED}@db:5432/optuna"}},
     "overrides.automl.storage", {"overrides": {"automl.storage": "postgresql://u:***@db:5432/optuna"}}),
    ("pipeline", {"tracking_config": Tracking(tracking_uri=f"http://admin:{REFUSED}@mlflow:5000")},
     "tracking_config.tracking_uri", {"tracking_config": {"tracking_uri": "http://admin:***@mlflow:5000",
                                                          "experiment": "oneformer"}}),
    ("train", {"overrides": {"encryption_key": REFUSED}}, "overrides.encryption_key",
     {"overrides": {"encryption_key": "***"}}),
    ("evaluate", {"parent": f"http://u:{REFUSED}@models/m.pth"}, "parent", {"parent": "http://u:***@models/m.pth"}),
])
def test_a_secret_parameter_is_refused_with_where_it_goes_and_masked_in_prefect(
        flow_name: str, call: dict, key: str, masked: dict, tmp_path: Path) -> None:
    results = tmp_path / "results"
    error, stored, logs, state = _refused({"spec": "specs/smoke.yaml", "results_dir": str(results), **call}, flow_name)

    assert error.startswith(f"parameter {key} holds a secret") and REFUSED not in error
    for where in ("PGPASSWORD", "spec file on the worker", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD",
                  "AwsCredentials", "Secret block"):
        assert where in error
    assert {k: stored[k] for k in masked} == masked  # the stored copy was overwritten with the masked one
    assert not [line for line in logs if REFUSED in line] and REFUSED not in state
    assert not results.exists()  # refused before anything was written


def test_the_command_line_refuses_before_prefect_sees_the_parameters() -> None:
    with get_client(sync_client=True) as c:
        before = len(c.read_flow_runs())
    with pytest.raises(SecretParameterError, match="parameter tracking_config.tracking_uri holds a secret"):
        main(["--spec", "specs/smoke.yaml", "--mlflow-uri", f"postgresql://u:{REFUSED}@db/mlflow"])
    with pytest.raises(SecretParameterError, match="parameter overrides.encryption_key holds a secret"):
        main(["--spec", "specs/smoke.yaml", f"encryption_key={REFUSED}"])
    with get_client(sync_client=True) as c:
        assert len(c.read_flow_runs()) == before  # no flow run was created: nothing reached Prefect's database


# ----------------------------------------------------------------------------- the pipeline, then every byte
def leaks(data: bytes, where: str, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    """`where: secret` for each secret in the bytes, in the members of a zip and in gzip's content."""
    found = [f"{where}: {s}" for s in secrets if s.encode() in data]
    if data[:4] == b"PK\x03\x04":  # checkpoints (torch.save) and other zips: every member, stored or deflated
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                found += [x for n in z.namelist() for x in leaks(z.read(n), f"{where}!{n}", secrets)]
        except zipfile.BadZipFile:
            pass
    elif data[:2] == b"\x1f\x8b":
        found += leaks(gzip.decompress(data), f"{where}!gunzip", secrets)
    return found


def rows_holding(db: Path, value: str) -> list[tuple[str, str]]:
    """(table, the row's event name or column) of every row of a SQLite database with `value` in a column."""
    import sqlite3

    out = []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        for (table,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns = [r[1] for r in c.execute(f"PRAGMA table_info('{table}')")]
            for column in columns:
                label = "event" if "event" in columns else column
                out += [(table, str(r[0])) for r in c.execute(
                    f'SELECT "{label}" FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE ?', (f"%{value}%",))]
    return out


def scan_tree(root: Path, since: float = 0.0) -> tuple[int, list[str]]:
    """Files scanned under `root` (changed since `since`), and the secrets found in them."""
    files = [p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_mtime >= since]
    return len(files), [x for p in files for x in leaks(p.read_bytes(), str(p))]


def pg_dump(pg: dict, database: str) -> str:
    """A database's whole content as SQL text (the password goes to pg_dump in its environment only)."""
    return subprocess.run([str(pg["bindir"] / "pg_dump"), "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", "oneformer",
                           database], env={**os.environ, "PGPASSWORD": PG_PASSWORD}, check=True,
                          capture_output=True, text=True).stdout


def upload_tree(client, folder: Path, bucket: str, prefix: str) -> None:  # noqa: ANN001 - boto3 client
    """Every file under `folder` to s3://bucket/prefix/<relative path>."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


@pytest.fixture(scope="module")
def run(small_synth: Path, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One pipeline run (1 trial, 2 epochs, 64 px data) with every kind of secret; the servers stay up while the
    module's tests look into them."""
    import boto3
    from prefect_aws import AwsClientParameters, AwsCredentials

    root = tmp_path_factory.mktemp("secrets")
    t0 = time.time() - 1
    bindir = None if os.environ.get("ONEFORMER_TEST_POSTGRES_URL") else postgres_bin()  # this test sets a password
    with ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        for k in (*s3_env(moto_endpoint), "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "PGPASSWORD",
                  "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(k, raising=False)  # S3's endpoint and keys come from the block alone
        mp.setenv("ONEFORMER_CACHE", str(root / "cache"))
        s3 = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
        s3.create_bucket(Bucket="secrets")
        for name in ("train", "eval", "inference", "calibration"):
            upload_tree(s3, small_synth.parent / name, "secrets", f"bucket/{name}")
        AwsCredentials(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                       aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint)).save(
            "oneformer-secrets-test", overwrite=True)

        spec = yaml.safe_load(Path("specs/smoke.yaml").read_text())
        spec["encryption_key"] = ENCRYPTION_KEY
        pg = None
        if bindir is not None:  # the study and MLflow's store on PostgreSQL, their URLs holding the password
            url = stack.enter_context(postgres(bindir, PG_PASSWORD, ("optuna", "mlflow")))
            with_password = url.replace("oneformer@", f"oneformer:{PG_PASSWORD}@")
            spec["automl"]["storage"] = with_password  # in the spec file, where it belongs
            mlflow_uri = with_password.replace("postgresql://", "postgresql+psycopg://").removesuffix("/optuna")
            mp.setenv("MLFLOW_TRACKING_URI", f"{mlflow_uri}/mlflow")  # in the worker's environment, where it belongs
            pg = {"bindir": bindir, "port": int(url.rsplit(":", 1)[1].split("/")[0]), "storage": with_password}
        spec_path = root / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        classes = spec["model"]["sem_seg_head"]["num_classes"]
        overrides = {"model.sem_seg_head.num_classes": classes, "train.num_epochs": 2, "export.input_height": 64,
                     "export.input_width": 64, "quantize.num_calibration_images": 2, "automl.sampler": "random",
                     "quantize.max_miou_drop": 1.0}
        sources = DataSources(**{n: f"s3://secrets/bucket/{n}" for n in ("train", "eval", "inference", "calibration")})
        lines = LogLines()
        logging.getLogger().addHandler(lines)
        started = time.monotonic()
        try:
            result = pipeline(spec=str(spec_path), overrides=overrides, sources=sources, n_trials=1,
                              results_dir=str(root / "results"), model_name="secrets", stages={"gen_trt_engine": False},
                              s3_secret_block="aws-credentials/oneformer-secrets-test")
        finally:
            logging.getLogger().removeHandler(lines)
        seconds = time.monotonic() - started
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all()
        EventsWorker.drain_all()
        time.sleep(6)  # the server persists events in batches
        yield {"result": result, "root": root, "results": root / "results", "log": lines.lines, "pg": pg,
               "since": t0, "environ": dict(os.environ), "seconds": seconds}


@pytest.mark.slow
def test_the_pipeline_ran_on_every_secret(run: dict) -> None:
    from mlflow.tracking import MlflowClient

    result = run["result"]
    assert result["registered"]["version"] == "1" and result["metrics"]["mIoU"] >= 0
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} & set(run["environ"])  # the block
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run['results'].resolve()}/mlflow.db"
    c = MlflowClient(uri, registry_uri=uri)
    params = c.get_run(result["mlflow_run_id"]).data.params
    assert params["encryption_key"] == "***"  # masked, not dropped
    spec_file = yaml.safe_load((run["results"] / "spec.yaml").read_text())
    assert spec_file["encryption_key"] == "***"
    if run["pg"]:
        import optuna

        assert result["tracking_uri"].startswith("postgresql+psycopg://oneformer:***@127.0.0.1:")
        assert params["automl.storage"] == spec_file["automl"]["storage"] == \
            run["pg"]["storage"].replace(PG_PASSWORD, "***")
        (study,) = optuna.get_all_study_summaries(with_driver(run["pg"]["storage"]))  # the study lives in the server
        assert study.n_trials == 1


@pytest.mark.slow
def test_no_secret_in_any_file_the_run_wrote(run: dict) -> None:
    count, found = scan_tree(run["results"])
    assert count > 30 and found == []  # checkpoints, ONNX files, status.json, spec.yaml, MLflow's artifacts, ...
    assert list(run["results"].rglob("*.pth")) and list(run["results"].rglob("status.json"))
    _, found = scan_tree(run["root"] / "cache")  # the staged data
    assert found == []


@pytest.mark.slow
def test_no_secret_in_mlflow(run: dict) -> None:
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run['results'].resolve()}/mlflow.db"
    c = MlflowClient(uri, registry_uri=uri)
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    version = c.get_model_version("secrets", "1")
    text = json.dumps([[r.data.params, r.data.tags, r.info.artifact_uri] for r in runs] +
                      [version.tags, version.description, version.source])
    assert len(runs) >= 2 and [s for s in SECRETS if s in text] == []
    if run["pg"]:
        dump = pg_dump(run["pg"], "mlflow")
        assert "secrets" in dump and [s for s in SECRETS if s in dump] == []
    else:  # the SQLite store is inside the results folder: scanned byte by byte there too
        assert leaks((run["results"] / "mlflow.db").read_bytes(), "mlflow.db") == []


@pytest.mark.slow
def test_no_secret_in_prefects_database_or_storage(run: dict) -> None:
    import prefect.settings

    db = Path(prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().partition(":///")[2])
    assert db.is_file()  # the test harness's SQLite database, with its WAL beside it
    others = tuple(s for s in SECRETS if s != KEY_ID)
    assert [x for p in db.parent.glob(db.name + "*") for x in leaks(p.read_bytes(), str(p), others)] == []
    # Prefect itself records a block's plain fields (prefect-aws declares the access key ID one; the secret key is a
    # SecretStr, kept encrypted) in the event of the block's own save: the user's act, nowhere the pipeline wrote
    assert rows_holding(db, KEY_ID) and {event for _, event in rows_holding(db, KEY_ID)} <= \
        {"prefect.block-document.created", "prefect.block-document.updated"}
    for folder in (prefect.settings.PREFECT_LOCAL_STORAGE_PATH.value(), prefect.settings.PREFECT_HOME.value()):
        if Path(folder).is_dir():
            assert scan_tree(Path(folder), run["since"])[1] == []


@pytest.mark.slow
def test_no_secret_in_the_logs(run: dict) -> None:
    text = "\n".join(run["log"])
    assert "MLflow run" in text and "s3://secrets/bucket/train" in text  # the lines that name the stores
    assert [line for line in run["log"] if any(s in line for s in SECRETS)] == []


@pytest.mark.slow
def test_no_secret_in_the_optuna_database(run: dict) -> None:
    if run["pg"] is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed, or ONEFORMER_TEST_POSTGRES_URL "
                    "points at a server whose password this test does not set; the study ran on SQLite")
    dump = pg_dump(run["pg"], "optuna")
    assert "secrets-d" in dump and [s for s in SECRETS if s in dump] == []
