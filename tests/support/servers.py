"""Real servers for tests and benchmarks, started on 127.0.0.1 and stopped by whoever starts them: S3 (moto),
PostgreSQL, MLflow, a Prefect server and its workers, free ports."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moto.server import ThreadedMotoServer


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto(port: int = 0) -> Iterator[str]:
    """An S3 server over HTTP on 127.0.0.1 (a free port unless given); yields its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        yield f"http://{host}:{bound}"
    finally:
        server.stop()


def s3_env(endpoint: str, secret: str = "test") -> dict[str, str]:
    """The environment that points S3 clients (boto3, s3fs) at `endpoint`."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1"}


def postgres_bin() -> Path | None:
    """The folder with PostgreSQL's initdb and pg_ctl (PATH, then Debian's /usr/lib/postgresql/<v>/bin)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@contextmanager
def postgres(bindir: Path, password: str | None = None, databases: tuple[str, ...] = ("optuna",)) -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free port with `databases` (the first is in the URL); yields its SQLAlchemy
    URL. With `password`, TCP logins need it (scram-sha-256; the URL leaves it out, PGPASSWORD or the caller adds
    it); without, they are trusted."""
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
        import psycopg.sql

        with psycopg.connect(f"host=127.0.0.1 port={port} user=oneformer dbname=postgres",
                             autocommit=True) as c:
            for name in databases:
                c.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
            if password is not None:  # from now on TCP logins need the password; the socket stays trusted
                c.execute(psycopg.sql.SQL("ALTER USER oneformer PASSWORD {}").format(psycopg.sql.Literal(password)))
                (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
                                                  "host all all ::1/128 scram-sha-256\n")
                c.execute("SELECT pg_reload_conf()")
        yield f"postgresql://oneformer@127.0.0.1:{port}/{databases[0]}"
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def new_database(url: str, name: str, driver: str = "psycopg") -> str:
    """A new, empty database `name` on the PostgreSQL server of `url` (a URL from `postgres`); its SQLAlchemy URL
    with `driver`."""
    import psycopg
    import psycopg.sql

    server, _ = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as c:
        c.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    return f"{server.replace('postgresql://', f'postgresql+{driver}://')}/{name}"


@contextmanager
def mlflow_command(args: list[str], health: str, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow <args> --host 127.0.0.1 --port <free>` (a tracking server or `models serve`), up once `health`
    answers; yields its URL and stops it. MLflow execs `uvicorn` from PATH: the venv's bin goes first, as an
    activated venv has it. A tracking server runs without MLflow's job execution, as the README's does: the
    pipeline uses no server jobs, and they start nine more processes (a job runner and eight Huey consumers, about
    30 s of CPU per server on 2 cores)."""
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    with log.open("w") as out:
        server = subprocess.Popen([str(mlflow_bin), *args, "--host", "127.0.0.1", "--port", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **(env or {}),
                                       "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}{health}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


PREFECT = str(Path(sys.executable).parent / "prefect")


def stop(*procs: subprocess.Popen) -> None:
    """SIGINT twice (a worker ignores SIGTERM while it waits), then kill; all of them at once, so stopping three
    workers takes as long as the slowest, not the sum."""
    for _ in range(2):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_healthy(api: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Until the Prefect API at `api` answers /health (or its server exits)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(api + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"prefect server at {api} not healthy after {timeout}s")


@contextmanager
def prefect_server(root: Path, env: dict[str, str] | None = None,
                   database: str | None = None) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free port with its home under `root` (its log in root/logs) and its own SQLite
    database there, or `database` (a SQLAlchemy URL: PostgreSQL, as a server with several workers wants); yields
    the environment that points the CLI, flows and workers at it."""
    port = free_port()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env or {}), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_HOME": str(root / "prefect"),
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": database or f"sqlite+aiosqlite:///{root / 'prefect.db'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(env["PREFECT_API_URL"], server)
        yield env
    finally:
        stop(server)


@contextmanager
def prefect_workers(pool: str, names: list[str], env: dict[str, str], cwd: Path, logs: Path,
                    limit: int | None = None) -> Iterator[list[subprocess.Popen]]:
    """One `prefect worker start --pool <pool>` per name (each taking at most `limit` flow runs at once), logging to
    logs/<name>.log; stopped at the end."""
    workers = []
    try:
        for name in names:
            cmd = [PREFECT, "worker", "start", "--pool", pool, "--name", name,
                   *(["--limit", str(limit)] if limit else [])]
            workers.append(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=open(logs / f"{name}.log", "w"),
                                            stderr=subprocess.STDOUT))
        yield workers
    finally:
        stop(*workers)
