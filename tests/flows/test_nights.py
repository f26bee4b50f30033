"""The nightly pipeline night after night, as a schedule runs it: a night that fails at quantize and is resumed, a
night on the same data whose best checkpoint is unchanged (nothing new registered), a night on grown training data,
a night on a deliberately weak spec. The champion moves only on numbers measured on the same test images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from oneformer.data.synth import generate
from oneformer.spec import load_spec
from tasks.automl import open_study, rdb_storage
from tasks.sources import DataSources

pytestmark = pytest.mark.slow


def sources(root: Path, calibration: Path | None = None) -> DataSources:
    """The dataset at `root` in TAO's bucket layout, as the pipeline's sources."""
    return DataSources(train=str(root / "train"), eval=str(root / "eval"), inference=str(root / "inference"),
                       calibration=str(calibration or root / "calibration"))


def study_of(c: MlflowClient, result: dict, results: Path):  # noqa: ANN201 - an optuna Study
    """The study a pipeline run trained in, from its MLflow run's tag."""
    spec = load_spec(results / "spec.yaml")
    return open_study(spec, c.get_run(result["mlflow_run_id"]).data.tags["optuna.study"], rdb_storage(spec))


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory, prefect_api: None) -> dict:
    """Three nights in one results folder; night 1 first fails at quantize and is resumed."""
    root = tmp_path_factory.mktemp("nights")
    data1 = generate(root / "data1", train=8, val=4, size=64, seed=3, inference=2, calibration=2).parent
    data2 = generate(root / "data2", train=16, val=4, size=64, seed=4, inference=2, calibration=2).parent
    empty = root / "no-calibration"
    empty.mkdir()
    classes = yaml.safe_load((data1 / "spec.yaml").read_text())["model"]["sem_seg_head"]["num_classes"]
    results = root / "results"
    base = {"model.sem_seg_head.num_classes": classes, "train.num_epochs": 3, "export.input_height": 64,
            "export.input_width": 64, "quantize.num_calibration_images": 2, "quantize.max_miou_drop": 0.05,
            "automl.sampler": "random"}
    run = dict(spec="specs/smoke.yaml", results_dir=str(results), model_name="nightly",
               stages={"gen_trt_engine": False})
    out: dict = {"results": results, "data2": data2}
    with pytest.raises(Exception, match="calibration") as failed:
        pipeline(overrides=base, sources=sources(data1, empty), n_trials=1, **run)
    out["failed"] = str(failed.value)
    out["after_failure"] = {"record": json.loads((results / "pipeline_run.json").read_text()),
                            "summary": (results / "summary.md").read_text(),
                            "mtimes": {p: (results / p).stat().st_mtime_ns for p in
                                       ("evaluate/metrics.json", "export/model.onnx")}}
    out["night1"] = pipeline(overrides=base, sources=sources(data1), resume=True, n_trials=1, **run)
    out["mtimes1"] = {p: (results / p).stat().st_mtime_ns for p in out["after_failure"]["mtimes"]}
    # the same data again: this night's one trial runs out of automl.trial_timeout (10 ms: it stops before its first
    # step, whatever the machine), so its best is night 1's
    out["night1_again"] = pipeline(overrides={**base, "automl.trial_timeout": 0.01}, sources=sources(data1), n_trials=1,
                                   **run)
    out["night2"] = pipeline(overrides=base, sources=sources(data2), n_trials=2, **run)
    weak = {**base, "train.num_epochs": 1, "automl.search_space": {"train.optim.lr": {"min": 1e-6, "max": 2e-6}}}
    out["night3"] = pipeline(overrides=weak, sources=sources(data2), n_trials=1, **run)
    return out


def test_a_failed_night_resumed_redoes_only_what_failed(nights: dict) -> None:
    results, night1 = nights["results"], nights["night1"]
    record, summary = nights["after_failure"]["record"], nights["after_failure"]["summary"]
    assert record["state"] == "FAILED" and "calibration" in record["error"]
    assert "Error" in summary and "calibration" in summary  # the failure is in the run's summary
    c = MlflowClient(night1["tracking_uri"])
    failed_run = c.get_run(record["mlflow_run"])
    assert failed_run.info.status == "FAILED" and "calibration" in failed_run.data.tags["failure"]
    assert nights["mtimes1"] == nights["after_failure"]["mtimes"]  # evaluation and export were not redone
    study = study_of(c, night1, results)
    mine = [t for t in study.trials if t.user_attrs["run_key"] == record["run_key"]]
    assert len(mine) == 1  # the resumed night trained no more trials: its one was done
    assert night1["registered"]["version"] == "1" and "champion" in night1["registered"]["aliases"]
    assert json.loads((results / "pipeline_run.json").read_text())["state"] == "COMPLETED"


def test_each_night_trains_new_trials_and_the_champion_moves_on_the_same_images(nights: dict) -> None:
    from oneformer.actions.evaluate import evaluate

    results = nights["results"]
    n1, n2, n3 = nights["night1"], nights["night2"], nights["night3"]
    c = MlflowClient(n1["tracking_uri"], registry_uri=n1["tracking_uri"])
    v1, v2, v3 = (c.get_model_version("nightly", str(v)) for v in (1, 2, 3))
    assert [n["registered"]["version"] for n in (n1, n2, n3)] == ["1", "2", "3"]

    # data: every version carries the digest of the data it trained on
    assert v1.tags["data_digest"] != v2.tags["data_digest"] == v3.tags["data_digest"]
    # a new study for new data (warm-started from the champion) and for a new spec; nothing re-proposed
    studies = [c.get_run(n["mlflow_run_id"]).data.tags["optuna.study"] for n in (n1, n2, n3)]
    assert len(set(studies)) == 3
    s2 = open_study(load_spec(results / "spec.yaml"), studies[1], rdb_storage(load_spec(results / "spec.yaml")))
    assert len(s2.trials) == 2 and s2.trials[0].params == json.loads(v1.tags["automl_params"])
    assert s2.trials[0].user_attrs["warm_start"] == "nightly v1" and s2.trials[1].params != s2.trials[0].params
    # the warm-start trial trained afresh in its own study's folder (trial numbers restart in every study)
    assert Path(s2.trials[0].user_attrs["checkpoint"]).parent != Path(n1["checkpoint"]).parent
    assert s2.trials[0].user_attrs["results_dir"].endswith(f"{studies[1]}/trial_000")
    assert [len(n["trials"]) for n in (n1, n2, n3)] == [1, 2, 1]  # each night trained its own new trials

    # night 2: the champion (v1) was scored again on night 2's test images, and the alias followed that comparison
    eval2 = nights["data2"] / "eval"
    spec = load_spec(results / "spec.yaml", {"results_dir": str(results / "check"),
                                             "dataset.test.images": str(eval2 / "images.tar.gz"),
                                             "dataset.test.annotations": str(eval2 / "annotations.json"),
                                             "dataset.test.panoptic": str(eval2 / "images_panoptic.tar.gz")})
    v1_on_night2 = evaluate(spec.model_copy(update={"evaluate": spec.evaluate.model_copy(
        update={"checkpoint": n1["checkpoint"]})}))["mIoU"]
    assert float(v2.tags["champion_mIoU_same_test"]) == pytest.approx(v1_on_night2, abs=1e-6)
    assert float(v2.tags["champion_mIoU_same_test"]) != pytest.approx(float(v1.tags["mIoU"]), abs=1e-9)
    beat = float(v2.tags["mIoU"]) >= float(v2.tags["champion_mIoU_same_test"]) and v2.tags["int8_gate"] == "passed"
    champion_after_2 = "2" if beat else "1"
    assert n2["registered"]["promoted"] == beat

    # night 3: a weak spec scores below the champion on the same images and stays a candidate
    champion = str(c.get_model_version_by_alias("nightly", "champion").version)
    assert champion == champion_after_2 and v3.aliases == ["candidate"]
    assert v3.tags["champion_compared"] == champion_after_2
    assert float(v3.tags["mIoU"]) < float(v3.tags["champion_mIoU_same_test"])
    card = v3.description
    assert "## Champion gate" in card and f"champion v{champion_after_2}" in card and "stays a **candidate**" in card
    assert f"{float(v3.tags['champion_mIoU_same_test']):.4f}" in card and f"{float(v3.tags['mIoU']):.4f}" in card


def test_a_night_whose_best_checkpoint_is_registered_already_registers_nothing_new(nights: dict) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    n1, again, n2 = nights["night1"], nights["night1_again"], nights["night2"]
    c = MlflowClient(n1["tracking_uri"], registry_uri=n1["tracking_uri"])
    study = study_of(c, again, nights["results"])
    assert study.study_name == c.get_run(n1["mlflow_run_id"]).data.tags["optuna.study"]  # the same data: same study
    assert len(study.trials) == 2 and study.trials[1].state.name == "FAIL"  # this night's trial ran out of time
    assert "ran past automl.trial_timeout (0.01 s) in epoch 0 at step 0" in study.trials[1].user_attrs["error"]
    assert again["checkpoint"] == n1["checkpoint"]

    reg = again["registered"]
    assert reg["new"] is False and reg["version"] == "1" and not reg["promoted"]
    assert reg["verdict"].startswith("champion unchanged: v1") and "nothing new registered" in reg["verdict"]
    versions = c.search_model_versions("name = 'nightly'")
    shas = [v.tags["checkpoint_sha256"] for v in versions]
    assert len(shas) == len(set(shas)) == 3  # one version per checkpoint: nights 1, 2 and 3
    assert n2["registered"]["new"] and n2["registered"]["version"] == "2"  # new data: a new checkpoint, registered

    run = c.get_run(again["mlflow_run_id"])  # the MLflow parent run says so and names the version
    assert run.data.tags["registry"] == "unchanged" and run.data.tags["registered_version"] == "1"
    assert run.data.tags["mlflow.note.content"].startswith("champion unchanged: v1: [nightly v1](")
    summary = Path(c.download_artifacts(again["mlflow_run_id"], "summary.md")).read_text()
    assert "**champion unchanged: v1**" in summary and "`models:/nightly/1`" in summary

    async def artifacts() -> list:
        async with get_client() as client:
            flow_run = run.data.tags["prefect.flow_run_id"]
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])))
    links = {a.key: a for a in asyncio.run(artifacts())}
    link = links["registered-model-version"]  # the Prefect artifact links the version it already is
    assert "#/models/nightly/versions/1" in link.data and link.description.startswith("champion unchanged: v1")
    assert "**champion unchanged: v1**" in links["oneformer-pipeline"].data
