"""Prediction files in the standard formats: semantic PNGs, COCO panoptic PNG+JSON, COCO instance results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from oneformer.data.labelmap import LabelMap
from oneformer.data.readers import id_to_rgb, rgb_to_id
from oneformer.errors import DataError
from oneformer.runtime.postprocess import InstancePrediction, PanopticPrediction

SEMANTIC_DIR, PANOPTIC_DIR, PANOPTIC_JSON, INSTANCE_JSON = "semantic", "panoptic", "panoptic.json", "instances.json"


def raw_ids(labels: LabelMap) -> np.ndarray:
    """Class index -> raw category id."""
    out = np.zeros(labels.num_classes, dtype=np.int64)
    for c in labels.categories:
        out[labels.index[c.id]] = c.id
    return out


def write_semantic(folder: Path, stem: str, classes: np.ndarray, labels: LabelMap) -> Path:
    """PNG of raw category ids (0 = unlabeled), 8-bit when ids fit, else 16-bit."""
    ids = raw_ids(labels)[classes]
    path = folder / SEMANTIC_DIR / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8 if ids.max(initial=0) < 256 else np.uint16)).save(path)
    return path


def read_semantic(path: Path, labels: LabelMap, ignore: int = 255) -> np.ndarray:
    """Class-index map from a raw-id PNG; unknown ids become `ignore`."""
    raw = np.asarray(Image.open(path)).astype(np.int64)
    lut = np.full(max(int(raw.max()) + 1, 1), ignore, dtype=np.int64)
    for cid, idx in labels.index.items():
        if cid < len(lut):
            lut[cid] = idx
    return lut[raw]


def panoptic_entry(folder: Path, stem: str, pred: PanopticPrediction, labels: LabelMap) -> dict:
    """Write the panoptic PNG; return its COCO panoptic annotation entry (raw category ids)."""
    path = folder / PANOPTIC_DIR / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id_to_rgb(pred.ids)).save(path)
    raw = raw_ids(labels)
    segs = [{"id": s["id"], "category_id": int(raw[s["category"]]), "isthing": s["isthing"],
             "score": round(s["score"], 4), "area": int((pred.ids == s["id"]).sum())} for s in pred.segments]
    return {"file_name": f"{stem}.png", "image_name": stem, "segments_info": segs}


def instance_entries(stem: str, preds: list[InstancePrediction], labels: LabelMap) -> list[dict]:
    """COCO instance results (RLE, raw category ids), keyed by image file stem."""
    raw = raw_ids(labels)
    out = []
    for p in preds:
        rle = mask_utils.encode(np.asfortranarray(p.mask.astype(np.uint8)))
        out.append({"image_name": stem, "category_id": int(raw[p.cls]), "score": round(p.score, 5),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return out


class PredictionFiles:
    """Reads a predictions folder written by `oneformer inference` or any tool using the same formats."""

    def __init__(self, folder: str | Path, labels: LabelMap) -> None:
        self.folder, self.labels = Path(folder), labels
        if not self.folder.is_dir():
            raise DataError(f"evaluate.predictions: {self.folder} is not a folder")
        self.panoptic = {}
        if (self.folder / PANOPTIC_JSON).is_file():
            for a in json.loads((self.folder / PANOPTIC_JSON).read_text())["annotations"]:
                self.panoptic[Path(a["file_name"]).stem] = a
        self.instances: dict[str, list] = {}
        if (self.folder / INSTANCE_JSON).is_file():
            for r in json.loads((self.folder / INSTANCE_JSON).read_text()):
                self.instances.setdefault(r["image_name"], []).append(r)
        self.has_instances = (self.folder / INSTANCE_JSON).is_file()
        if not (self.folder / SEMANTIC_DIR).is_dir() and not self.panoptic and not self.has_instances:
            raise DataError(f"evaluate.predictions: {self.folder} holds no {SEMANTIC_DIR}/, {PANOPTIC_JSON} "
                            f"or {INSTANCE_JSON}")

    def semantic(self, stem: str, ignore: int) -> np.ndarray | None:
        """The semantic prediction for an image, if present."""
        p = self.folder / SEMANTIC_DIR / f"{stem}.png"
        return read_semantic(p, self.labels, ignore) if p.is_file() else None

    def panoptic_pred(self, stem: str) -> PanopticPrediction | None:
        """The panoptic prediction for an image, if present."""
        entry = self.panoptic.get(stem)
        if entry is None:
            return None
        with Image.open(self.folder / PANOPTIC_DIR / entry["file_name"]) as im:
            ids = rgb_to_id(np.asarray(im.convert("RGB")))
        segs = [{"id": s["id"], "category": self.labels.index[s["category_id"]],
                 "isthing": bool(self.labels.thing_mask[self.labels.index[s["category_id"]]]),
                 "score": s.get("score", 1.0)} for s in entry["segments_info"] if s["category_id"] in self.labels.index]
        return PanopticPrediction(ids, segs)

    def instance_preds(self, stem: str) -> list[InstancePrediction] | None:
        """The instance predictions for an image ([] when the file lists none for it)."""
        if not self.has_instances:
            return None
        out = []
        for r in self.instances.get(stem, []):
            if r["category_id"] in self.labels.index:
                out.append(InstancePrediction(mask_utils.decode(r["segmentation"]).astype(bool),
                                              self.labels.index[r["category_id"]], float(r["score"])))
        return out
