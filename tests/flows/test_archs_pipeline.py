"""Mask2Former and SegFormer through the whole pipeline from an S3 bucket (a server on 127.0.0.1) in their own TAO
layouts, registered under their own names, and the registered model pulled back and used on an image."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
from servers import s3_env

from flows.params import Stages, Tracking
from flows.pipeline import pipeline
from oneformer.data.synth import generate, make_image
from tasks.sources import DataSources

pytestmark = pytest.mark.slow


def upload_tree(client, folder: Path, bucket: str, prefix: str) -> None:  # noqa: ANN001 - boto3 client
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


@pytest.fixture(scope="module", params=["mask2former", "segformer"])
def run(request: pytest.FixtureRequest, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One pipeline run of the network (one training, 2 epochs) on its synthetic layout uploaded to S3."""
    import boto3

    arch = request.param
    tmp = tmp_path_factory.mktemp(f"pipeline-{arch}")
    spec = generate(tmp / "data", train=8, val=4, size=64, seed=3, inference=2, calibration=2, arch=arch)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**s3_env(moto_endpoint), "ONEFORMER_CACHE": str(tmp / "cache")}.items():
            mp.setenv(k, v)
        client = boto3.client("s3", endpoint_url=moto_endpoint)
        client.create_bucket(Bucket=arch)
        if arch == "segformer":  # one root holding images/<split> and masks/<split>
            upload_tree(client, spec.parent / "data", arch, "seg")
            sources = DataSources(**{n: f"s3://{arch}/seg" for n in ("train", "eval", "inference", "calibration")})
        else:
            for name in ("train", "eval", "inference", "calibration"):
                upload_tree(client, spec.parent / name, arch, f"bucket/{name}")
            sources = DataSources(**{n: f"s3://{arch}/bucket/{n}" for n in ("train", "eval", "inference",
                                                                          "calibration")})
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        overrides = {"train.num_epochs": 2, "export.input_height": 64, "export.input_width": 64,
                     "inference.image_size": [64, 64], "quantize.max_miou_drop": 1.0}
        for key in ("images", "annotations", "panoptic", "img_dir", "panoptic_json", "panoptic_dir",
                    "instance_json"):  # the data comes from the bucket, not the local paths synth wrote
            for split in ("train", "val", "test"):
                overrides[f"dataset.{split}.{key}"] = None
        if arch == "segformer":
            overrides["dataset.segment.root_dir"] = None
        result = pipeline(spec=str(spec), overrides=overrides, sources=sources, automl_policy=False,
                          stages=Stages(gen_trt_engine=False), results_dir=str(tmp / "results"),
                          tracking_config=Tracking(tracking_uri=uri))
    return {"arch": arch, "result": result, "uri": uri}


def test_the_network_is_registered_under_its_own_name_with_its_card(run: dict) -> None:
    reg = run["result"]["registered"]
    assert reg["name"] == run["arch"] and reg["model_uri"] == f"models:/{run['arch']}/1"
    client = mlflow.MlflowClient(run["uri"])
    card = client.get_model_version(run["arch"], "1").description
    assert ("SegFormer (mit_b0 encoder" if run["arch"] == "segformer" else "Mask2Former, mode panoptic") in card
    metrics = run["result"]["metrics"]
    assert ("PQ" in metrics) == (run["arch"] == "mask2former") and 0 <= metrics["mIoU"] <= 1


def test_the_registered_model_segments_an_image(run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run["uri"])  # as a user points MLflow at it (set_tracking_uri would
    # stay set for every later test in this process)
    model = mlflow.pyfunc.load_model(run["result"]["registered"]["model_uri"])
    image = make_image(np.random.default_rng(4), 64)[0]
    [out] = model.predict([image])
    assert out["task"] == "semantic" and np.asarray(out["label_map"]).shape == (64, 64)
    assert out["segments"] and all(s["category"] for s in out["segments"])
