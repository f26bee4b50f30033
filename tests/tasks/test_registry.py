"""The registry's rules on a real MLflow store: every version is a candidate; champion moves only for a passing INT8
model scoring at least the champion's mIoU on the same test images (an equal score counts); a version loads back by
alias."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from prefect import flow

from oneformer.spec import load_spec
from tasks import tracking
from tasks.card import ModelCard
from tasks.registry import register
from tasks.results import ChampionScore, Conversion, Evaluation, Registration, Selection


@flow
def register_flow(uri: str, experiment: str, card: ModelCard, onnx_file: str) -> Registration:
    """The register task needs a flow run around it, as in the pipeline."""
    return register(uri, experiment, card, onnx_file)


@pytest.fixture
def store(tmp_path: Path, random_models: dict) -> dict:
    """A SQLite MLflow store with a run, and the random checkpoint's ONNX, INT8 and checkpoint files to register."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, "registry-test", tmp_path / "artifacts")
    for kind in ("onnx", "int8", "checkpoint"):
        shutil.copy(random_models[kind], tmp_path / random_models[kind].name)
    run = tracking.start_run(c, exp, "pipeline")
    tracking.log_metrics(c, run, {"mIoU": 0.5}, "test_")
    return {"uri": uri, "exp": exp, "run": run, "dir": tmp_path,
            "checkpoint": tmp_path / random_models["checkpoint"].name}


def card(store: dict, miou: float, int8_passed: bool, champion: ChampionScore | None = None,
         name: str = "registry-test") -> ModelCard:
    """A card for the store's model with the given test mIoU, INT8 verdict and champion score on the same images."""
    checkpoint = str(store["checkpoint"])
    conversions = (Conversion("onnx", "PyTorch -> ONNX FP32", str(store["dir"] / "model.onnx"),
                              {"agreement": 1.0, "max_abs_diff": {"scores": 1e-6}, "passed": True}),
                   Conversion("int8", "ONNX FP32 -> INT8", str(store["dir"] / "model.int8.onnx"),
                              {"agreement": 0.99 if int8_passed else 0.5, "max_abs_diff": {}, "passed": int8_passed,
                               "mIoU": {"fp32": miou, "int8": miou}}))
    per_class = [{"class": 0, "name": "sky", "iou": miou}]
    return ModelCard(name=name, spec=load_spec().model_dump(mode="json"),
                     selection=Selection(checkpoint=checkpoint, mIoU=miou), conversions=conversions,
                     evaluation=Evaluation({"mIoU": miou, "num_images": 4.0}, per_class, str(store["dir"])),
                     params_m=1.0, key_settings={"train.optim.lr": 1e-3}, data_digest="d", train_source="s3://b/train",
                     spec_digest="s", flow_run_id="f", run_id=store["run"],
                     checkpoint_sha256=f"c{miou}-{int8_passed}-{champion}",  # each card its own checkpoint
                     run_key=f"run-{miou}-{int8_passed}-{champion}", champion=champion)


@pytest.mark.usefixtures("every_backend")  # the run's metrics carry every backend's latency
def test_champion_moves_only_for_a_passing_int8_at_least_as_good(prefect_api, store: dict,  # noqa: ANN001
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def version(miou: float, int8_passed: bool, champion: tuple[str, float | None] | None = None) -> Registration:
        score = ChampionScore(champion[0], champion[1], {}, None if champion[1] is not None else "broke") \
            if champion else None
        return register_flow(store["uri"], store["exp"], card(store, miou, int8_passed, score),
                             str(store["dir"] / "model.onnx"))

    assert set(version(0.6519589369, True).aliases) == {"candidate", "champion"}
    again = version(0.6519589369, True, ("1", 0.6519589369))  # as good on the same images: it moves
    assert (again.version, again.champion, set(again.aliases), again.promoted) == ("2", "2", {"candidate", "champion"},
                                                                                     True)
    failed_int8 = version(0.9, False, ("2", 0.6))
    assert (failed_int8.aliases, failed_int8.champion) == (["candidate"], "2")
    assert "INT8 gate failed" in failed_int8.verdict
    worse = version(0.5, True, ("2", 0.6519589369))  # worse on the same images, however it scored elsewhere
    assert (worse.aliases, worse.champion) == (["candidate"], "2")
    assert worse.verdict == "test mIoU 0.5000 < champion v2's 0.6520 on the same 4 test images"
    stale = version(0.99, True, ("1", 0.1))  # compared against v1, but v2 is champion now
    assert (stale.aliases, stale.champion) == (["candidate"], "2") and "changed to v2" in stale.verdict
    unscored = version(0.99, True, ("2", None))
    assert unscored.aliases == ["candidate"]
    again_registered = version(0.5, True, ("2", 0.6519589369))  # a resumed run: the same run key and checkpoint
    assert again_registered.version == worse.version

    c = tracking.client(store["uri"])
    described = c.get_model_version("registry-test", worse.version)
    assert "| champion v2 | 0.6520 |" in described.description and "stays a **candidate**" in described.description
    assert described.tags["champion_mIoU_same_test"] == "0.651959" and described.tags["champion_compared"] == "2"
    assert "| ONNX FP32 -> INT8 | 50.0000% |" in c.get_model_version("registry-test", "3").description
    assert c.get_model_version_by_alias("registry-test", "champion").tags["mIoU"] == "0.651959"
    assert "mlflow.pyfunc.load_model('models:/registry-test@champion')" in \
        c.get_registered_model("registry-test").description
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])  # as a user points MLflow at the store
    local = Path(mlflow.artifacts.download_artifacts("models:/registry-test@champion", dst_path=str(store["dir"])))
    assert {"MLmodel", "model.onnx", "model.int8.onnx", "random.pth", "serving.json"} <= \
        {p.name for p in local.rglob("*")}
    outputs = {o.model_id for o in c.get_run(store["run"]).outputs.model_outputs}  # the run lists its models
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert len(outputs) == 6 and mlmodel["model_id"] in outputs and mlmodel["run_id"] == store["run"]
    assert mlmodel["signature"]["params"] and (local / "serving_input_example.json").is_file()
    logged = c.get_logged_model(mlmodel["model_id"])
    shown = {m.key: m.value for m in logged.metrics}  # on MLflow's model page: quality and each backend's speed
    assert shown["test_mIoU"] == 0.5 and {"backend_onnxruntime_fp32_ms", "backend_openvino_int8_agreement"} <= \
        set(shown) and all(k == "test_mIoU" or k.startswith("backend_") for k in shown)
    report = json.loads((local / "artifacts" / "backends.json").read_text())
    assert set(report["files"]) == {"fp32", "int8"} and report["int8_gate"]["passed"]  # the champion's gate passed
    assert report["chosen"]["backend"] in {n for rep in report["files"].values() for n in rep["backends"]}
    tags = c.get_model_version_by_alias("registry-test", "champion").tags
    assert (tags["serving_backend"], tags["serving_file"]) == (report["chosen"]["backend"], report["chosen"]["file"])
    failed = Path(mlflow.artifacts.download_artifacts(f"models:/registry-test/{failed_int8.version}",
                                                      dst_path=str(store["dir"] / "failed")))
    failed_report = json.loads((failed / "artifacts" / "backends.json").read_text())
    assert set(failed_report["files"]) == {"fp32"} and not failed_report["int8_gate"]["passed"]  # never measured
    run_files = {a.path for a in c.list_artifacts(store["run"], "backends")}
    assert run_files == {"backends/backends.json"}
    assert "backend_openvino_fp32_ms" in c.get_run(store["run"]).data.metrics


def image_files(data: Path) -> list[Path]:
    """The tiny dataset's inference images, extracted from its archive."""
    from oneformer.data.readers import list_images
    from oneformer.data.staging import stage

    return list_images(stage(str(data / "inference" / "images.tar.gz"), "inference images"), "inference images")


@pytest.fixture
def registered(prefect_api, store: dict, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: ANN001
    """One registered version (the random checkpoint's files), the store set as MLflow's tracking URI."""
    register_flow(store["uri"], store["exp"], card(store, 0.5, True), str(store["dir"] / "model.onnx"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    return "models:/registry-test@champion"


def test_a_registered_version_predicts_on_images(registered: str, small_synth: Path, random_models: dict) -> None:
    from oneformer.data.readers import read_image
    from oneformer.runtime import open_predictor
    from oneformer.runtime.segment import segment

    model = mlflow.pyfunc.load_model(registered)
    path = image_files(small_synth.parent)[0]
    image = read_image(path)
    forms = ([str(path)], str(path), [path.read_bytes()], image, [image, image], {"image": [image]},
             pd.DataFrame({"image": [path.read_bytes()]}))
    on_ort = {"backend": "onnxruntime", "precision": "fp32"}
    results = [model.predict(v, params=on_ort) for v in forms]
    assert [len(r) for r in results] == [1, 1, 1, 1, 2, 1, 1]
    as_path = results[0][0]
    expected = segment(open_predictor(random_models["onnx"], backend="onnxruntime"), image, "semantic", (64, 64))
    for out in (r for rs in results for r in rs):  # the same answer whichever way the image comes
        assert out["model"] == "onnxruntime-fp32" and out["task"] == "semantic"
        assert out["label_map"].shape == image.shape[:2]
        np.testing.assert_array_equal(out["label_map"], expected.labels)
    names = {c["name"] for c in yaml.safe_load((small_synth.parent / "train" / "label_map.json").read_text())}
    assert {s["category"] for s in as_path["segments"]} <= names
    assert sum(s["area"] for s in as_path["segments"]) == image.shape[0] * image.shape[1]
    int8 = model.predict([str(path)], params={"precision": "int8"})[0]  # the params of before backends existed
    assert int8["model"] in ("onnxruntime-int8", "openvino-int8") and int8["label_map"].shape == image.shape[:2]
    fp32 = model.predict([str(path)], params={"precision": "fp32"})[0]
    assert fp32["model"] in ("onnxruntime-fp32", "openvino-fp32")
    panoptic = model.predict([str(path)], params={"task": "panoptic"})[0]  # not the graph's task: the checkpoint
    assert panoptic["model"] == "torch-fp32" and panoptic["segment_map"].shape == image.shape[:2]
    with pytest.raises(Exception, match="precision='fp16'"):
        model.predict([str(path)], params={"precision": "fp16"})
    with pytest.raises(Exception, match="image 0: 7 bytes that no image decoder reads"):
        model.predict([b"notapng"])
    with pytest.raises(Exception, match="image 1: no/such.png is neither an image file nor a base64-encoded image"):
        model.predict([str(path), "no/such.png"])


@pytest.mark.slow
def test_mlflow_models_serve_answers_an_image_over_http(registered: str, small_synth: Path, tmp_path: Path) -> None:
    import base64
    import urllib.request

    from servers import mlflow_command

    from oneformer.data.readers import read_image

    with mlflow_command(["models", "serve", "-m", registered, "--env-manager", "local"], "/ping",
                        tmp_path / "serve.log") as url:
        path = image_files(small_synth.parent)[0]
        encoded = base64.b64encode(path.read_bytes()).decode()
        answers = []
        for body in ({"inputs": [encoded], "params": {"backend": "onnxruntime", "precision": "int8"}},
                     {"dataframe_split": {"columns": ["image"], "data": [[encoded]]}, "params": {"backend": "openvino",
                                                                                              "precision": "fp32"}}):
            request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answers.append(json.loads(response.read())["predictions"])
    h, w = read_image(path).shape[:2]
    for (prediction,), model in zip(answers, ("onnxruntime-int8", "openvino-fp32")):
        assert prediction["model"] == model and np.asarray(prediction["label_map"]).shape == (h, w)
        assert prediction["segments"] and all(isinstance(s["category"], str) for s in prediction["segments"])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, random_models: dict) -> Iterator[dict]:
    """An `mlflow server` over HTTP on 127.0.0.1 (SQLite behind it), once for the module, and the files to
    register."""
    from servers import mlflow_command

    tmp_path = tmp_path_factory.mktemp("server_store")
    with mlflow_command(["server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
                         (tmp_path / "served").as_uri(), "--workers", "1"], "/health", tmp_path / "server.log") as uri:
        for kind in ("onnx", "int8", "checkpoint"):
            shutil.copy(random_models[kind], tmp_path / random_models[kind].name)
        yield {"uri": uri, "exp": tracking.experiment_id(tracking.client(uri), "registry-test", None), "dir": tmp_path,
               "checkpoint": tmp_path / random_models["checkpoint"].name}


@pytest.fixture
def server_store(mlflow_server: dict) -> dict:
    """The module's server with a new pipeline run (each test registers its own model name)."""
    return {**mlflow_server, "run": tracking.start_run(tracking.client(mlflow_server["uri"]), mlflow_server["exp"],
                                                       "pipeline")}


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["model-versions/create", "registered-models/alias"])
def test_a_registration_cut_off_by_the_server_is_finished_once_by_the_rerun(prefect_api, server_store: dict,  # noqa: ANN001
                                                                           cut: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from faults import Schedule, fault_proxy

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the server is gone: fail now, not after minutes
    name = f"registry-{cut.replace('/', '-')}"  # the module's server is shared: each cut registers its own model
    version_card = card(server_store, 0.5, True, name=name)
    schedule = Schedule([], path_contains=cut, rest="reset")
    with fault_proxy(server_store["uri"], schedule) as proxy, \
            pytest.raises(Exception, match=rf"registering {name} at http://127\.0\.0\.1:\d+ failed: .*Nothing is "
                                           r"half-registered: rerun the pipeline with resume=True"):
        register_flow(proxy, server_store["exp"], version_card, str(server_store["dir"] / "model.onnx"))
    assert any(f == "reset" for _, f in schedule.seen)  # the cut hit the request it was meant for
    c = tracking.client(server_store["uri"])
    before = c.search_model_versions(f"name = '{name}'")
    assert len(before) == (0 if cut == "model-versions/create" else 1)
    assert all(v.tags.get("registration") != "complete" for v in before)

    done = register_flow(server_store["uri"], server_store["exp"], version_card, str(server_store["dir"] /
                                                                                     "model.onnx"))
    (only,) = c.search_model_versions(f"name = '{name}'")  # registered exactly once
    assert only.version == done.version and only.tags["registration"] == "complete"
    assert set(c.get_model_version(name, only.version).aliases) == {"candidate", "champion"}
    again = register_flow(server_store["uri"], server_store["exp"], version_card, str(server_store["dir"] /
                                                                                      "model.onnx"))
    assert again.version == done.version and len(c.search_model_versions(f"name = '{name}'")) == 1
