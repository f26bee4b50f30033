"""Scale-out of AutoML trials: trials per minute with 1 and with 2 Prefect workers on the same study (JSON out).

One process starts a PostgreSQL server (the study), a Prefect server, the trial deployment of prefect.yaml and
process workers on one pool (one flow run and one compute thread each), then runs the pipeline's own study code
(tasks.automl.run_study with automl.trial_deployment) twice on one study: N trials with one worker, then N more with
two. Each trial trains the smoke network for real on synthetic data, in its own flow run.
Goal: two workers reach >= 1.8x the trials per minute of one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the real servers the tests start

from servers import PREFECT, postgres, postgres_bin, prefect_server, prefect_workers  # noqa: E402


def phase(api: str, spec_path: Path, base: dict, workers: int, trials: int, env: dict, work: Path) -> dict:
    """`trials` trials of the study over `workers` workers; the wall time from the first launch to the last result."""
    import optuna
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from oneformer.spec import load_spec
    from tasks import tracking
    from tasks.automl import run_study

    spec = load_spec(spec_path, {**base, "automl.n_trials": trials, "automl.n_jobs": workers})
    uri = f"sqlite:///{work}/mlflow.db"

    @flow(name="scale-out-benchmark")
    def study() -> dict:
        c = tracking.client(uri)
        exp = tracking.experiment_id(c, "scale-out", work / "mlartifacts")
        t0 = time.monotonic()
        s = run_study(spec, uri, exp, tracking.start_run(c, exp, f"{workers}-workers"), "bench",
                      f"{workers}-workers")
        seconds = time.monotonic() - t0
        mine = [t for t in s.trials if t.user_attrs.get("run_key") == f"{workers}-workers"]
        return {"workers": workers, "trials": len(mine), "seconds": round(seconds, 1),
                "trials_per_minute": round(60 * len(mine) / seconds, 3),
                "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in mine),
                "ran_on": sorted({t.user_attrs.get("worker", "?") for t in mine}),
                "train_seconds": [t.user_attrs.get("seconds") for t in mine]}

    names = [f"w{i + 1}" for i in range(workers)]
    with prefect_workers("oneformer-process", names, env, ROOT, work / "logs", limit=1), \
            temporary_settings(updates={PREFECT_API_URL: api}):
        time.sleep(5)  # the workers register with the pool before the first trial is launched
        return study()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6, help="trials per phase")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=16)
    p.add_argument("--out", default="benchmarks/results/scale_out.json")
    a = p.parse_args()

    from oneformer.data.synth import generate

    work = Path(tempfile.mkdtemp(prefix="scale-out-"))
    spec_path = generate(work / "data", train=a.train_images, val=8, size=64, seed=0)
    bindir = postgres_bin()
    if bindir is None:
        sys.exit("PostgreSQL's server programs (initdb, pg_ctl) are needed: apt-get install postgresql")
    try:
        with postgres(bindir) as pg:
            base = {"results_dir": str(work / "results"), "train.num_epochs": a.epochs, "automl.pruner": "none",
                    "automl.sampler": "random", "automl.storage": pg, "automl.study_name": "scale-out",
                    "automl.trial_deployment": "oneformer-trial/trial",
                    "automl.search_space": {"train.optim.lr": {"min": 1e-4, "max": 1e-3, "scale": "log"}}}
            own = {"ONEFORMER_HOME": str(ROOT), "OMP_NUM_THREADS": "1", "PREFECT_WORKER_QUERY_SECONDS": "2",
                   "PREFECT_LOGGING_EXTRA_LOGGERS": "oneformer"}
            with prefect_server(work, own) as env:
                for args in (["work-pool", "create", "oneformer-process", "--type", "process"],
                             ["--no-prompt", "deploy", "--name", "trial"]):
                    subprocess.run([PREFECT, *args], env=env, cwd=ROOT, check=True, capture_output=True)
                runs = [phase(env["PREFECT_API_URL"], spec_path, base, n, a.trials, env, work) for n in (1, 2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, two = runs
    out = {"trials_per_phase": a.trials, "epochs_per_trial": a.epochs, "train_images": a.train_images,
           "cores": os.cpu_count(), "threads_per_worker": 1, "one_worker": one, "two_workers": two,
           "speedup": round(two["trials_per_minute"] / one["trials_per_minute"], 3)}
    out["goal_met"] = out["speedup"] >= 1.8 and len(two["ran_on"]) == 2
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
