"""The scoring benchmark's generator and both scorers on a few small images: equal results, pool == serial."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from oneformer.data.readers import read_coco_panoptic
from oneformer.evaluation.formats import PANOPTIC_JSON, PredictionFiles
from oneformer.evaluation.metrics import coco_mask_ap
from oneformer.evaluation.score import score_files

SPEC = importlib.util.spec_from_file_location("bench_metrics", Path(__file__).parents[2] / "benchmarks" / "metrics.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules["bench_metrics"] = bench  # its pool's workers find its functions by module name
SPEC.loader.exec_module(bench)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-metrics")
    bench.generate(out, 12, 80, workers=2)
    return out


def _score(folder: Path, workers: int, chunk: int = 16) -> dict:
    labels = bench.label_map()
    records = read_coco_panoptic(folder / "gt" / PANOPTIC_JSON, folder / "gt" / "images", folder / "gt" / "panoptic",
                                 labels)
    files = PredictionFiles(folder / "pred", labels)
    import oneformer.evaluation.score as score_module

    old, score_module.MIN_PARALLEL_IMAGES = score_module.MIN_PARALLEL_IMAGES, 1
    try:
        scorer = score_files(files, records, ["semantic", "panoptic", "instance"], 255, workers, chunk)
    finally:
        score_module.MIN_PARALLEL_IMAGES = old
    return scorer.gt_coco, scorer.results, scorer.result()


def test_product_equals_references(folder: Path) -> None:
    _, _, got = _score(folder, 1)
    want = {**bench.reference_pq(folder, 1), **bench.reference_ap(folder), **bench.reference_miou(folder)}
    assert got["num_images"] == 12
    assert 0 < got["PQ"] < 1 and 0 < got["AP"] < 1 and 0 < got["mIoU"] < 1  # not a degenerate case
    assert max(bench.compare(got, want).values()) <= 1e-9
    assert bench.reference_pq(folder, 2) == pytest.approx(bench.reference_pq(folder, 1), abs=1e-12)


def test_pool_equals_serial(folder: Path) -> None:
    gt, results, serial = _score(folder, 1)
    _, _, pooled = _score(folder, 2, chunk=5)
    assert pooled == serial
    assert coco_mask_ap(gt, results, workers=2, min_images=1) == coco_mask_ap(gt, results, workers=1)


def test_generator_is_deterministic(tmp_path: Path, folder: Path) -> None:
    bench.generate(tmp_path, 2, 80)
    for sub in ("gt/panoptic/img_00001.png", "pred/semantic/img_00000.png"):
        a = np.asarray(bench.Image.open(tmp_path / sub))
        assert (a == np.asarray(bench.Image.open(folder / sub))).all()
