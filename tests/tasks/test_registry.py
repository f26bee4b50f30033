"""The registry's rules on a real MLflow store: every version is a candidate; champion moves only for a passing INT8
model scoring at least the champion's mIoU on the same test images (an equal score counts); a version loads back by
alias."""

from __future__ import annotations

from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
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
def store(tmp_path: Path) -> dict:
    """A SQLite MLflow store with a run, a one-node ONNX model and a checkpoint file to register."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, "registry-test", tmp_path / "artifacts")
    graph = helper.make_graph([helper.make_node("Identity", ["pixel_values"], ["scores"])], "g",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "model.onnx")
    (tmp_path / "model_epoch_000_step_00001.pth").write_bytes(b"weights")
    return {"uri": uri, "exp": exp, "run": tracking.start_run(c, exp, "pipeline"), "dir": tmp_path}


def card(store: dict, miou: float, int8_passed: bool, champion: ChampionScore | None = None) -> ModelCard:
    """A card for the store's model with the given test mIoU, INT8 verdict and champion score on the same images."""
    checkpoint = str(store["dir"] / "model_epoch_000_step_00001.pth")
    conversions = (Conversion("onnx", "PyTorch -> ONNX FP32", str(store["dir"] / "model.onnx"),
                              {"agreement": 1.0, "max_abs_diff": {"scores": 1e-6}, "passed": True}),
                   Conversion("int8", "ONNX FP32 -> INT8", None, {"agreement": 0.99 if int8_passed else 0.5,
                                                                 "max_abs_diff": {}, "passed": int8_passed,
                                                                 "mIoU": {"fp32": miou, "int8": miou}}))
    per_class = [{"class": 0, "name": "sky", "iou": miou}]
    return ModelCard(name="registry-test", spec=load_spec().model_dump(mode="json"),
                     selection=Selection(checkpoint=checkpoint, mIoU=miou), conversions=conversions,
                     evaluation=Evaluation({"mIoU": miou, "num_images": 4.0}, per_class, str(store["dir"])),
                     params_m=1.0, key_settings={"train.optim.lr": 1e-3}, data_digest="d", train_source="s3://b/train",
                     spec_digest="s", flow_run_id="f", run_id=store["run"], checkpoint_sha256=f"c{miou}",
                     run_key=f"run-{miou}-{int8_passed}-{champion}", champion=champion)


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
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])  # as a user points MLflow at the store
    model = mlflow.pyfunc.load_model("models:/registry-test@champion")
    out = model.predict(np.ones((2, 3, 8, 8), np.float32))
    assert out["scores"].shape == (2, 3, 8, 8)
    local = Path(mlflow.artifacts.download_artifacts("models:/registry-test@champion", dst_path=str(store["dir"])))
    assert {"MLmodel", "model.onnx", "model_epoch_000_step_00001.pth"} <= {p.name for p in local.rglob("*")}
    outputs = {o.model_id for o in c.get_run(store["run"]).outputs.model_outputs}  # the run lists its models
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert len(outputs) == 6 and mlmodel["model_id"] in outputs and mlmodel["run_id"] == store["run"]
