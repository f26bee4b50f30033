"""The automl section of the spec: the Optuna search, and TAO's algorithm names read as a sampler + pruner."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from oneformer.sections import Section

log = logging.getLogger("oneformer.spec")  # one logger for the whole spec package, as before the split


# TAO's automl_algorithm names as an Optuna sampler + pruner; TAO's others have no Optuna equivalent here
TAO_ALGORITHMS = {"bayesian": ("tpe", "none"), "asha": ("random", "successive_halving"),
                  "hyperband": ("random", "hyperband"), "bohb": ("tpe", "hyperband")}
TAO_NOT_OFFERED = ("bfbo", "dehb", "hyperband_es", "pbt")


class AutoMLConfig(Section):
    """Hyper-parameter search with Optuna."""

    automl_algorithm: str | None = Field(
        None, description="TAO's algorithm name, as a sampler + pruner: bayesian = tpe + none, asha = random + "
                          "successive_halving, hyperband = random + hyperband, bohb = tpe + hyperband; read into "
                          "automl.sampler and automl.pruner (a warning names a replaced value), which the written "
                          "spec shows instead")
    n_trials: int = Field(4, gt=0, description="Trials a run trains in all (a resumed run counts those it "
                                               "already finished)")
    timeout: int | None = Field(None, gt=0, description="Seconds")
    trial_timeout: float | None = Field(6 * 3600, gt=0, description="Seconds one trial may train before it is "
                                                                  "stopped and recorded failed")
    sampler: Literal["tpe", "random", "gp", "cmaes"] = Field(
        "tpe", description="Optuna sampler proposing each trial's values: TPE, random, Gaussian process or CMA-ES; "
                           "seeded from train.seed")
    pruner: Literal["successive_halving", "hyperband", "median", "none"] = Field(
        "median", description="Early stopping on per-epoch validation mIoU; successive_halving met the pruning "
                              "goal in benchmarks/automl.py")
    n_jobs: int = Field(1, gt=0, description="Trials run in parallel; a new one starts as soon as one ends")
    trial_deployment: str | None = Field(
        None, pattern=r"^oneformer-trial/[^/]+$",
        description="Prefect deployment each trial runs as (oneformer-trial/<name>, see prefect.yaml), so n_jobs "
                    "trials spread over every worker of its pool; empty: trials run inside this flow run's process")
    storage: str | None = Field(None, description="SQLAlchemy URL; default SQLite in results_dir")
    study_name: str | None = Field(None, description="Optuna study to create or continue; default model_name")
    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="key -> {min, max, scale} narrowing or extending the schema"
    )

    @field_validator("automl_algorithm")
    @classmethod
    def _offered(cls, v: str | None) -> str | None:
        if v is not None and v.strip().lower() not in TAO_ALGORITHMS:
            why = "TAO's, with no Optuna equivalent here" if v.strip().lower() in TAO_NOT_OFFERED else "unknown"
            raise ValueError(f"{v!r} is {why}: choose one of {', '.join(TAO_ALGORITHMS)}, or set automl.sampler "
                             f"and automl.pruner yourself")
        return v

    @model_validator(mode="before")
    @classmethod
    def _tao_algorithm(cls, data: Any) -> Any:
        name = str(data.get("automl_algorithm") or "").strip().lower() if isinstance(data, dict) else ""
        if name not in TAO_ALGORITHMS:
            return data  # none, or one _offered refuses
        chosen = dict(zip(("sampler", "pruner"), TAO_ALGORITHMS[name], strict=True))
        for key, value in chosen.items():
            if data.get(key, value) != value:
                log.warning("automl.%s %r replaced by %r: automl.automl_algorithm=%s is sampler %s + pruner %s",
                            key, data[key], value, name, *TAO_ALGORITHMS[name])
        log.info("automl.automl_algorithm=%s: sampler %s + pruner %s", name, *TAO_ALGORITHMS[name])
        return {**data, "automl_algorithm": None, **chosen}  # read once: a later assignment is not re-mapped
