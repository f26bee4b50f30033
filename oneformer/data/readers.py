"""Readers for COCO panoptic, COCO instance and semantic JSONL, validated before any training step."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from oneformer.data.labelmap import LabelMap
from oneformer.data.staging import IMAGE_SUFFIXES, stage
from oneformer.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Segment:
    """One ground-truth segment of an image, already mapped to its class index."""

    id: int
    cls: int
    isthing: bool
    iscrowd: bool = False


@dataclass
class Record:
    """One annotated image; `load_target` turns it into a segment-id map plus its segments."""

    image: Path
    image_id: int | str
    height: int
    width: int
    kind: str
    segments: list[Segment] = field(default_factory=list)
    panoptic_png: Path | None = None
    coco_anns: list[dict] = field(default_factory=list)
    semantic_png: Path | None = None


def rgb_to_id(png: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colors to segment ids: R + 256 G + 256^2 B."""
    png = png.astype(np.int64)
    return (png[..., 0] + 256 * png[..., 1] + 256 * 256 * png[..., 2]).astype(np.int32)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids to COCO panoptic PNG colors."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def find_image_root(folder: Path, first_name: str, what: str) -> Path:
    """The folder that actually holds `first_name`, allowing one wrapper level (TAO's top error pattern)."""
    if (folder / first_name).exists():
        return folder
    inner = [d for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []
    for d in inner:
        if (d / first_name).exists():
            log.info("%s: %s is one level too high; using %s", what, folder, d)
            return d
    raise DataError(f"{what}: {first_name} not found in {folder} (nor in a wrapper folder inside it)")


def detect_format(annotations: Path) -> str:
    """coco_panoptic, coco, or semantic, from the annotation file itself."""
    if annotations.suffix == ".jsonl":
        return "semantic"
    with open(annotations) as f:
        head = json.load(f)
    anns = head.get("annotations") or [{}]
    return "coco_panoptic" if "segments_info" in anns[0] else "coco"


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc


def _class_of(cat_id: int, labels: LabelMap, where: str) -> int:
    if cat_id <= 0:
        raise DataError(f"{where}: category id {cat_id} must be > 0")
    if cat_id not in labels.index:
        raise DataError(f"{where}: category id {cat_id} is not in the label map (dataset.label_map)")
    return labels.index[cat_id]


def read_coco_panoptic(ann_file: Path, images: Path, panoptic: Path, labels: LabelMap) -> list[Record]:
    """COCO panoptic: annotations.json + a folder of segment PNGs + the image folder."""
    data = _load_json(ann_file)
    infos = {im["id"]: im for im in data.get("images", [])}
    anns = data.get("annotations", [])
    if not anns:
        raise DataError(f"{ann_file}: no annotations")
    images = find_image_root(images, infos[anns[0]["image_id"]]["file_name"], "images")
    panoptic = find_image_root(panoptic, anns[0]["file_name"], "panoptic")
    thing = labels.thing_mask
    out = []
    for a in anns:
        info = infos.get(a["image_id"])
        if info is None:
            raise DataError(f"{ann_file}: annotation for image_id {a['image_id']} has no entry in 'images'")
        segs = []
        for s in a["segments_info"]:
            if s["id"] <= 0:
                raise DataError(f"{ann_file}: image {info['file_name']}: segment id {s['id']} must be > 0")
            c = _class_of(s["category_id"], labels, f"{ann_file}: image {info['file_name']}")
            segs.append(Segment(s["id"], c, bool(thing[c]), bool(s.get("iscrowd", 0))))
        out.append(
            Record(images / info["file_name"], info["id"], info["height"], info["width"], "coco_panoptic",
                   segs, panoptic_png=panoptic / a["file_name"])
        )
    return out


def read_coco_instance(ann_file: Path, images: Path, labels: LabelMap) -> list[Record]:
    """COCO instance JSON with polygon or RLE segmentations."""
    data = _load_json(ann_file)
    by_image: dict = {im["id"]: [] for im in data.get("images", [])}
    for a in data.get("annotations", []):
        if a.get("id", 1) <= 0:
            raise DataError(f"{ann_file}: annotation id {a.get('id')} must be > 0")
        by_image.setdefault(a["image_id"], []).append(a)
    if not data.get("images"):
        raise DataError(f"{ann_file}: no images")
    images = find_image_root(images, data["images"][0]["file_name"], "images")
    thing = labels.thing_mask
    out = []
    for im in data["images"]:
        segs = []
        for n, a in enumerate(by_image[im["id"]], start=1):
            c = _class_of(a["category_id"], labels, f"{ann_file}: image {im['file_name']}")
            segs.append(Segment(n, c, bool(thing[c]), bool(a.get("iscrowd", 0))))
        out.append(Record(images / im["file_name"], im["id"], im["height"], im["width"], "coco", segs,
                          coco_anns=by_image[im["id"]]))
    return out


def read_semantic_jsonl(ann_file: Path, images: Path | None, labels: LabelMap) -> list[Record]:
    """Semantic JSONL lines {"img": ..., "segm": ...}; relative paths resolve against the image folder."""
    base = images or ann_file.parent
    out = []
    for n, line in enumerate(ann_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            img, segm = base / item["img"], base / item["segm"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise DataError(f"{ann_file}:{n}: expected {{\"img\": ..., \"segm\": ...}} ({exc})") from exc
        if not segm.exists() and (ann_file.parent / item["segm"]).exists():
            segm = ann_file.parent / item["segm"]
        out.append(Record(img, n, 0, 0, "semantic", semantic_png=segm))
    return out


def check_files(records: list[Record], what: str) -> None:
    """Every referenced file exists; the error names the first few missing."""
    missing = [r.image for r in records if not r.image.is_file()]
    missing += [p for r in records for p in (r.panoptic_png, r.semantic_png) if p and not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{what}: missing file {', '.join(map(str, missing[:3]))}{more}")


def read_split(
    annotations: str | None, images: str | None, panoptic: str | None, fmt: str, labels: LabelMap, what: str
) -> list[Record]:
    """Stage and read one split, validating ids, classes and files."""
    if not annotations:
        raise DataError(f"{what}.annotations is not set")
    ann = stage(annotations, f"{what}.annotations")
    img = stage(images, f"{what}.images") if images else None
    kind = detect_format(ann) if fmt == "auto" else fmt
    if kind == "coco_panoptic":
        if img is None or not panoptic:
            raise DataError(f"{what}: COCO panoptic needs {what}.images and {what}.panoptic")
        records = read_coco_panoptic(ann, img, stage(panoptic, f"{what}.panoptic"), labels)
    elif kind == "coco":
        if img is None:
            raise DataError(f"{what}.images is not set")
        records = read_coco_instance(ann, img, labels)
    else:
        records = read_semantic_jsonl(ann, img, labels)
    check_files(records, what)
    log.info("%s: %d images (%s)", what, len(records), kind)
    return records


def labels_from_annotations(annotations: str, contiguous: bool) -> LabelMap:
    """Fallback label map from a COCO file's categories when dataset.label_map is not set."""
    ann = stage(annotations, "annotations")
    if ann.suffix == ".jsonl":
        raise DataError("semantic JSONL data needs dataset.label_map")
    data = _load_json(ann)
    return LabelMap.from_list(data.get("categories", []), contiguous, f"{ann} categories")


def load_target(rec: Record, labels: LabelMap) -> tuple[np.ndarray, list[Segment]]:
    """Segment-id map (int32, 0 = void) and the segments present, for any annotation kind."""
    if rec.kind == "coco_panoptic":
        with Image.open(rec.panoptic_png) as im:
            return rgb_to_id(np.asarray(im.convert("RGB"))), rec.segments
    if rec.kind == "coco":
        from pycocotools import mask as mask_utils

        ids = np.zeros((rec.height, rec.width), dtype=np.int32)
        for seg, a in zip(rec.segments, rec.coco_anns):
            rle = a["segmentation"]
            if isinstance(rle, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(rle, rec.height, rec.width))
            elif isinstance(rle.get("counts"), list):
                rle = mask_utils.frPyObjects(rle, rec.height, rec.width)
            ids[mask_utils.decode(rle).astype(bool)] = seg.id
        return ids, rec.segments
    with Image.open(rec.semantic_png) as im:
        raw = np.asarray(im).astype(np.int64)
    if raw.ndim == 3:
        raw = raw[..., 0]
    lut = np.zeros(max(int(raw.max()) + 1, 256), dtype=np.int32)
    for cid, idx in labels.index.items():
        if cid < len(lut):
            lut[cid] = idx + 1
    ids = lut[raw]
    thing = labels.thing_mask
    segs = [Segment(int(v), int(v) - 1, bool(thing[int(v) - 1])) for v in np.unique(ids) if v > 0]
    return ids, segs


def list_images(folder: Path, what: str) -> list[Path]:
    """Image files under a folder (recursively), sorted; an empty set is an error."""
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{what}: no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    return files
