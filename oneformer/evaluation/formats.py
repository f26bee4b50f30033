"""Prediction files in the standard formats: semantic PNGs, COCO panoptic PNG+JSON, COCO instance results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from oneformer.data.labelmap import LabelMap
from oneformer.data.readers import id_to_rgb
from oneformer.errors import DataError
from oneformer.runtime.postprocess import InstancePrediction, PanopticPrediction

SEMANTIC_DIR, PANOPTIC_DIR, PANOPTIC_JSON, INSTANCE_JSON = "semantic", "panoptic", "panoptic.json", "instances.json"
SEMANTIC_MANIFEST = "ids.json"  # in semantic/: which ids the PNGs hold, so reading them never needs a guess


def raw_ids(labels: LabelMap) -> np.ndarray:
    """Class index -> raw category id."""
    out = np.zeros(labels.num_classes, dtype=np.int64)
    for c in labels.categories:
        out[labels.index[c.id]] = c.id
    return out


def write_semantic(folder: Path, stem: str, classes: np.ndarray, labels: LabelMap) -> Path:
    """PNG of raw category ids (0 = unlabeled), 8-bit when ids fit, else 16-bit; the folder's ids.json says so."""
    ids = np.where(classes >= 0, raw_ids(labels)[np.clip(classes, 0, None)], 0)
    path = folder / SEMANTIC_DIR / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (manifest := path.parent / SEMANTIC_MANIFEST).is_file():
        manifest.write_text(json.dumps({"semantic_ids": "raw", "unlabeled": 0}))
    Image.fromarray(ids.astype(np.uint8 if ids.max(initial=0) < 256 else np.uint16)).save(path)
    return path


def semantic_luts(labels: LabelMap, ignore: int) -> dict[str, dict[int, int]]:
    """PNG value -> class index (-1: unlabeled) under each reading of semantic prediction PNGs."""
    raw = {cid: idx for cid, idx in labels.index.items()}
    raw.setdefault(0, -1)  # 0 is unlabeled in raw-id PNGs unless a category uses it
    raw.setdefault(ignore, -1)
    contiguous = {i: i for i in range(labels.num_classes)}
    contiguous.setdefault(ignore, -1)
    return {"raw": raw, "contiguous": contiguous}


def read_semantic(path: Path, lut: dict[int, int]) -> np.ndarray:
    """Class-index map (-1 unlabeled, int16) of a semantic PNG through one reading of its values: one table gather
    over the PNG's own 8/16-bit values (no widening of the pixels), unknown values checked on the small table."""
    with Image.open(path) as im:
        values = np.asarray(im)
    if values.ndim != 2:
        raise DataError(f"evaluate.predictions: {path} is a {values.ndim}-channel image; a semantic prediction is a "
                        f"single-channel PNG of ids")
    if values.dtype not in (np.uint8, np.uint16):
        values = values.astype(np.int64)
    top = 1 << 16 if values.dtype == np.uint16 else 256 if values.dtype == np.uint8 else int(values.max(initial=0)) + 1
    table = np.full(max(top, max(lut) + 1), -2, dtype=np.int16)
    for v, idx in lut.items():
        table[v] = idx
    out = table[values]
    if (out == -2).any():
        bad = sorted(int(v) for v in np.unique(values[out == -2]))[:10]
        raise DataError(f"evaluate.predictions: {path} holds values {bad} that are not ids of this reading; check "
                        f"evaluate.semantic_ids (raw category ids or contiguous class indices)")
    return out


def panoptic_entry(folder: Path, stem: str, pred: PanopticPrediction, labels: LabelMap) -> dict:
    """Write the panoptic PNG; return its COCO panoptic annotation entry (raw category ids)."""
    path = folder / PANOPTIC_DIR / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id_to_rgb(pred.ids)).save(path)
    raw = raw_ids(labels)
    segs = [{"id": s["id"], "category_id": int(raw[s["category"]]), "isthing": s["isthing"],
             "score": round(s["score"], 4), "area": int((pred.ids == s["id"]).sum())} for s in pred.segments]
    return {"file_name": f"{stem}.png", "image_name": stem, "segments_info": segs}


def panoptic_ids(path: Path) -> np.ndarray:
    """A COCO panoptic PNG's segment ids (R + 256 G + 256^2 B, int32), as `rgb_to_id` reads them, in one pass:
    PIL's RGBX bytes read as little-endian 32-bit words, the pad byte masked off."""
    with Image.open(path) as im:
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        words = np.frombuffer(rgb.tobytes("raw", "RGBX"), dtype="<u4").reshape(rgb.height, rgb.width)
    return (words & 0xFFFFFF).view(np.int32)  # < 2**24: the same values, no copy


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
    """A predictions folder written by `oneformer inference` or another tool: semantic PNGs (raw ids or contiguous
    indices, as evaluate.semantic_ids declares), panopticapi's panoptic.json + PNGs, and COCO instance results
    keyed by `image_id` (COCO tools) or `image_name` (ours). Images are matched by id or by file stem."""

    def __init__(self, folder: str | Path, labels: LabelMap, semantic_ids: str = "auto", ignore: int = 255) -> None:
        self.folder, self.labels = Path(folder), labels
        if not self.folder.is_dir():
            what = "is not a folder" if self.folder.exists() else "does not exist"
            raise DataError(f"evaluate.predictions: {self.folder} {what}; give the folder that holds semantic/, "
                            f"panoptic.json or instances.json")
        self.panoptic: dict[tuple[str, int | str], dict] = {}
        self.panoptic_dir = self.folder / PANOPTIC_DIR
        if (self.folder / PANOPTIC_JSON).is_file():
            data = _json(self.folder / PANOPTIC_JSON)
            if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
                raise DataError(f"evaluate.predictions: {self.folder / PANOPTIC_JSON} has no 'annotations' list "
                                f"(panopticapi's format)")
            if not self.panoptic_dir.is_dir() and (self.folder / "panoptic_pred").is_dir():
                self.panoptic_dir = self.folder / "panoptic_pred"
            for a in data["annotations"]:
                for key in _keys(a, "file_name"):
                    self.panoptic[key] = a
        self.instances: dict[tuple[str, int | str], list] = {}
        self.has_instances = (self.folder / INSTANCE_JSON).is_file()
        if self.has_instances:
            results = _json(self.folder / INSTANCE_JSON)
            results = results.get("annotations", results) if isinstance(results, dict) else results
            if not isinstance(results, list):
                raise DataError(f"evaluate.predictions: {self.folder / INSTANCE_JSON} is not a list of COCO results")
            for n, r in enumerate(results):
                keys = _keys(r, "image_name")
                if not keys:
                    raise DataError(f"evaluate.predictions: {self.folder / INSTANCE_JSON} entry {n} has neither "
                                    f"'image_id' nor 'image_name'")
                self.instances.setdefault(keys[0], []).append(r)
        self.semantic_dir = self.folder / SEMANTIC_DIR
        self.reading: dict[int, int] | None = None
        if self.semantic_dir.is_dir():
            self.reading = self._semantic_reading(semantic_ids, ignore)
        if self.reading is None and not self.panoptic and not self.has_instances:
            raise DataError(f"evaluate.predictions: {self.folder} holds no {SEMANTIC_DIR}/, {PANOPTIC_JSON} "
                            f"or {INSTANCE_JSON}")

    def _semantic_reading(self, declared: str, ignore: int) -> dict[int, int]:
        """The value -> class table for the semantic PNGs: the declared one, or under `auto` the one reading that
        fits every file; two readings that both fit but disagree are an error, never a guess."""
        luts = semantic_luts(self.labels, ignore)
        manifest = self.semantic_dir / SEMANTIC_MANIFEST
        if declared == "auto" and manifest.is_file():  # written by `oneformer inference`
            declared = _json(manifest).get("semantic_ids", "auto")
            if declared not in luts:
                raise DataError(f"evaluate.predictions: {manifest}: semantic_ids must be raw or contiguous")
        if declared != "auto":
            return luts[declared]
        values: set[int] = set()
        for path in sorted(self.semantic_dir.glob("*.png")):
            values |= {int(v) for v in np.unique(np.asarray(Image.open(path)))}
        fitting = [name for name, lut in luts.items() if values <= lut.keys()]
        if not fitting:
            raise DataError(f"evaluate.predictions: the values {sorted(values)[:12]} of {self.semantic_dir} are "
                            f"neither raw category ids nor contiguous class indices of this label map")
        if len(fitting) == 2 and any(luts["raw"][v] != luts["contiguous"][v] for v in values):
            raise DataError(f"evaluate.predictions: the values {sorted(values)[:12]} of {self.semantic_dir} read both "
                            f"as raw category ids and as contiguous class indices, with different classes; set "
                            f"evaluate.semantic_ids=raw or evaluate.semantic_ids=contiguous")
        return luts[fitting[0]]

    def tasks(self) -> list[str]:
        """The tasks these files hold predictions for."""
        return [t for t, on in (("semantic", self.reading is not None), ("panoptic", bool(self.panoptic)),
                                ("instance", self.has_instances)) if on]

    def where(self, task: str, stem: str, image_id: int | str) -> str:
        """The file (or entry) holding an image's prediction, for messages."""
        if task == "semantic":
            return str(self.semantic_dir / f"{stem}.png")
        if task == "panoptic":
            entry = self._find(self.panoptic, stem, image_id)
            return str(self.panoptic_dir / entry["file_name"]) if entry else str(self.folder / PANOPTIC_JSON)
        return f"{self.folder / INSTANCE_JSON} (image {image_id}, {stem})"

    def has(self, task: str, stem: str, image_id: int | str) -> bool:
        """Whether the files hold a prediction of `task` for this image."""
        if task == "semantic":
            return (self.semantic_dir / f"{stem}.png").is_file()
        if task == "panoptic":
            return self._find(self.panoptic, stem, image_id) is not None
        return self._find(self.instances, stem, image_id) is not None

    @staticmethod
    def _find(index: dict, stem: str, image_id: int | str) -> Any:
        return index.get(("id", image_id), index.get(("name", stem)))

    def semantic(self, stem: str, image_id: int | str = -1) -> np.ndarray | None:
        """The semantic prediction (class indices, -1 unlabeled) for an image, if present."""
        p = self.semantic_dir / f"{stem}.png"
        return read_semantic(p, self.reading) if self.reading is not None and p.is_file() else None

    def panoptic_pred(self, stem: str, image_id: int | str = -1) -> PanopticPrediction | None:
        """The panoptic prediction for an image, if present."""
        entry = self._find(self.panoptic, stem, image_id)
        if entry is None:
            return None
        png = self.panoptic_dir / entry["file_name"]
        if not png.is_file():
            raise DataError(f"evaluate.predictions: {png} (named by {self.folder / PANOPTIC_JSON}) does not exist")
        ids = panoptic_ids(png)
        segs = [{"id": s["id"], "category": self.labels.index[s["category_id"]],
                 "isthing": bool(self.labels.thing_mask[self.labels.index[s["category_id"]]]),
                 "score": s.get("score", 1.0)} for s in entry["segments_info"] if s["category_id"] in self.labels.index]
        return PanopticPrediction(ids, segs)

    def instance_preds(self, stem: str, image_id: int | str = -1) -> list[InstancePrediction] | None:
        """The instance predictions for an image (None when the file lists none for it)."""
        found = self._find(self.instances, stem, image_id)
        if found is None:
            return None
        return [InstancePrediction(mask_utils.decode(r["segmentation"]).astype(bool),
                                   self.labels.index[r["category_id"]], float(r["score"]))
                for r in found if r["category_id"] in self.labels.index]

    def instance_rles(self, stem: str, image_id: int | str = -1) -> list[tuple[int, float, dict]] | None:
        """The instance predictions for an image as (class index, score, compressed RLE), not decoded: what mask AP
        reads (None when the file lists none for it)."""
        found = self._find(self.instances, stem, image_id)
        if found is None:
            return None
        out = []
        for r in found:
            if r["category_id"] not in self.labels.index:
                continue
            rle = r["segmentation"]
            if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str):  # bytes or uncompressed counts
                if isinstance(rle, dict) and isinstance(rle.get("counts"), list):
                    rle = mask_utils.frPyObjects(rle, *rle["size"])
                rle = _rle(mask_utils.decode(rle))
            out.append((self.labels.index[r["category_id"]], float(r["score"]), rle))
        return out


def _rle(mask: np.ndarray) -> dict:
    """A mask as compressed RLE with text counts (COCO results' form)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _json(path: Path) -> Any:
    """A JSON file, or a clear error naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"evaluate.predictions: {path} is not JSON ({exc})") from None


def _keys(entry: dict, name_field: str) -> list[tuple[str, int | str]]:
    """The keys an entry is found by: its image_id, and the stem of its image name or file name."""
    keys: list[tuple[str, int | str]] = []
    if "image_id" in entry:
        keys.append(("id", entry["image_id"]))
    name = entry.get(name_field) or entry.get("image_name")
    if name:
        keys.append(("name", Path(str(name)).stem))
    return keys
