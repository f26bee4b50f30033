"""Staging from S3: our staging (ETag-keyed cache, streamed download, safe extraction) vs boto3 + `tar xzf`.

Serves a synthetic dataset in TAO's bucket layout from an S3 server over HTTP on 127.0.0.1 (moto), then, in
rounds with fresh caches (alternating which goes first):
- baseline: boto3 `download_file` of every object the train action needs, then `tar xzf` of each archive;
- cold: `oneformer.data.staging.stage` of the same objects into an empty cache;
- warm: the same staging again with the cache kept (objects unchanged, so nothing is downloaded).
Goals: cold <= 1.0x baseline, warm < 5% of cold. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def baseline(client, objects: list[tuple[str, str]], out: Path) -> None:  # noqa: ANN001 - boto3 client
    """What a user scripts by hand: download each object, untar each archive."""
    for key, _ in objects:
        local = out / key
        local.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("data", key, str(local))
        if local.name.endswith(".tar.gz"):
            dest = local.with_name(local.name.removesuffix(".tar.gz"))
            dest.mkdir()
            subprocess.run(["tar", "xzf", str(local), "-C", str(dest)], check=True)


def ours(objects: list[tuple[str, str]]) -> None:
    """The train action's staging, as the pipeline's stage-data task runs it."""
    from oneformer.data.staging import stage_all

    stage_all({spec_key: f"s3://data/{key}" for key, spec_key in objects})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1600, help="training images (the eval split gets a quarter)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/staging.json")
    a = p.parse_args()

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    from oneformer.data.synth import generate
    from tasks.sources import DataSources, required

    work = Path(tempfile.mkdtemp(prefix="staging-bench-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        client.create_bucket(Bucket="data")
        generate(work / "src", train=a.images, val=max(4, a.images // 4), size=a.size, inference=1, calibration=1)
        for folder in ("train", "eval"):
            for f in sorted((work / "src" / folder).iterdir()):
                if f.is_file():
                    client.upload_file(str(f), "data", f"bucket/{folder}/{f.name}")
        uris = required("train", DataSources(train="s3://data/bucket/train", eval="s3://data/bucket/eval"))
        objects = sorted({(u.removeprefix("s3://data/"), k) for k, u in uris.items()})
        objects = list({key: (key, k) for key, k in objects}.values())  # each object once
        size_mb = sum(client.head_object(Bucket="data", Key=k)["ContentLength"] for k, _ in objects) / 2**20
        rounds = []
        for r in range(a.rounds):
            base_dir, cache = work / f"base{r}", work / f"cache{r}"
            base_dir.mkdir()
            os.environ["ONEFORMER_CACHE"] = str(cache)
            def timed(fn, *args) -> float:  # noqa: ANN001, ANN002
                t0 = time.perf_counter()
                fn(*args)
                return time.perf_counter() - t0

            if r % 2:  # alternate who goes first, so page-cache and allocator warm-up favour neither
                t_cold, t_base = timed(ours, objects), timed(baseline, client, objects, base_dir)
            else:
                t_base, t_cold = timed(baseline, client, objects, base_dir), timed(ours, objects)
            t0 = time.perf_counter()
            ours(objects)
            t_warm = time.perf_counter() - t0
            rounds.append({"baseline_s": t_base, "cold_s": t_cold, "warm_s": t_warm,
                           "cold_vs_baseline": t_cold / t_base, "warm_vs_cold": t_warm / t_cold})
            shutil.rmtree(base_dir)
            shutil.rmtree(cache)
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        result = {"objects": [k for k, _ in objects], "data_mb": round(size_mb, 1), "rounds": a.rounds,
                  **{k: round(v, 4) for k, v in med.items()},
                  "goals": {"cold_vs_baseline<=1.0": med["cold_vs_baseline"] <= 1.0,
                            "warm_vs_cold<0.05": med["warm_vs_cold"] < 0.05},
                  "per_round": [{k: round(v, 4) for k, v in r.items()} for r in rounds]}
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
