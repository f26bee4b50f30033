"""AutoML pruning: a pruned Optuna study vs the same trials run to their full budget (JSON out).

Both studies run through the pipeline's own code (tasks.automl.run_study in a Prefect flow, real training on
the synthetic dataset) with the same enqueued trial values, so the only difference is the pruner.
Reports the best validation mIoU each reached and the epochs each spent.
Goal: pruned best within 0.01 mIoU of the full-budget best, for at most 40% of its epochs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import optuna
from prefect import flow

from oneformer.data.synth import generate
from oneformer.spec import load_spec
from tasks import tracking
from tasks.automl import open_study, rdb_storage, run_study, study_name
from tasks.search_space import search_space


@flow(name="automl-benchmark")
def study(spec, name: str, trials: list[dict], uri: str) -> dict:  # noqa: ANN001
    """Enqueue the trials, run the study, and summarize it."""
    storage = rdb_storage(spec)
    s = open_study(spec, study_name(spec, "benchmark"), storage)  # the study run_study continues
    for params in trials:
        s.enqueue_trial(params)
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, "automl-benchmark", Path(spec.results_dir) / "mlartifacts")
    t0 = time.monotonic()
    s = run_study(spec, uri, exp, tracking.start_run(c, exp, name), "benchmark", name)
    done = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"best_mIoU": max(t.value for t in done), "epochs": sum(t.user_attrs.get("epochs", 0) for t in s.trials),
            "seconds": round(time.monotonic() - t0, 1),
            "trials": [{"number": t.number, "state": t.state.name, "epochs": t.user_attrs.get("epochs"),
                        "mIoU": t.value if t.value is not None else max(t.intermediate_values.values(), default=None),
                        "lr": t.params["train.optim.lr"],
                        "curve": [round(t.intermediate_values[k], 4) for k in sorted(t.intermediate_values)]}
                       for t in s.trials]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--pruner", default="successive_halving", choices=["successive_halving", "median", "hyperband"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/automl.json")
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="automl-bench-"))
    spec_path = generate(work / "data", train=64, val=48, size=128)  # 48 val images: per-epoch mIoU noise < 16's
    base = {"train.num_epochs": a.epochs, "automl.n_trials": a.trials, "automl.sampler": "random",
            "automl.search_space": {"train.optim.lr": {"min": 1e-5, "max": 1e-2, "scale": "log"}}}
    space = search_space(load_spec(spec_path, base))
    sampler = optuna.samplers.RandomSampler(seed=a.seed)
    draft = optuna.create_study(sampler=sampler)
    trials = [draft.ask(space).params for _ in range(a.trials)]
    uri = f"sqlite:///{work}/mlflow.db"
    results = {}
    try:
        for name, pruner in (("full", "none"), ("pruned", a.pruner)):
            spec = load_spec(spec_path, {**base, "results_dir": str(work / name), "automl.pruner": pruner})
            results[name] = study(spec, name, trials, uri)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    full, pruned = results["full"], results["pruned"]
    out = {"trials": a.trials, "epochs_per_trial": a.epochs, "pruner": a.pruner,
           "full": {k: full[k] for k in ("best_mIoU", "epochs", "seconds")},
           "pruned": {k: pruned[k] for k in ("best_mIoU", "epochs", "seconds")},
           "mIoU_gap": round(full["best_mIoU"] - pruned["best_mIoU"], 4),
           "epoch_ratio": round(pruned["epochs"] / full["epochs"], 3),
           "per_trial": {"full": full["trials"], "pruned": pruned["trials"]}}
    out["goal_met"] = out["mIoU_gap"] <= 0.01 and out["epoch_ratio"] <= 0.40
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
