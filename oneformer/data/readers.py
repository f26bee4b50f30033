"""Readers for COCO panoptic, COCO instance, semantic JSONL and mask folders (SegFormer's layout), validated before
any training step."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from oneformer.data.labelmap import LabelMap
from oneformer.data.staging import IMAGE_SUFFIXES, cache_root, is_archive, stage
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
    binary_255: bool = False  # SegFormer's label_transform norm: a 0/255 mask read as classes 0/1


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


def _load_json(path: Path, key: str = "annotations") -> dict | list:
    """A JSON file, with errors that name the spec key and the place of the syntax error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{key}: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                        "fix or re-export the file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{key}: {path} is not a UTF-8 JSON file ({exc.reason} at byte {exc.start}); "
                        "is it the right file?") from None


def _coco(path: Path, key: str) -> dict:
    """A COCO annotation file: a JSON object whose 'images' and 'annotations' are lists."""
    data = _load_json(path, key)
    if not isinstance(data, dict):
        raise DataError(f"{key}: {path} holds a JSON {type(data).__name__}, not a COCO object "
                        '{"images": [...], "annotations": [...], "categories": [...]}')
    for name in ("images", "annotations", "categories"):
        if not isinstance(data.get(name, []), list):
            raise DataError(f"{key}: {path}: '{name}' must be a list")
    return data


def detect_format(annotations: Path, key: str = "annotations") -> str:
    """coco_panoptic, coco, semantic, or masks (a folder), from the annotation file itself."""
    if annotations.is_dir():
        return "masks"
    if annotations.suffix == ".jsonl":
        return "semantic"
    anns = _coco(annotations, key).get("annotations") or [{}]
    return "coco_panoptic" if isinstance(anns[0], dict) and "segments_info" in anns[0] else "coco"


def _class_of(cat_id: int, labels: LabelMap, where: str) -> int:
    if not isinstance(cat_id, int) or cat_id <= 0:
        raise DataError(f"{where}: category id {cat_id!r} must be an integer > 0")
    if cat_id not in labels.index:
        raise DataError(f"{where}: category id {cat_id} is not in the label map (dataset.label_map); add it there "
                        "or fix the annotation")
    return labels.index[cat_id]


def _fields(key: str, ann_file: Path, build: Callable[[], list[Record]]) -> list[Record]:
    """Run a reader, turning a missing or mistyped COCO field into an error that names the file and the field."""
    try:
        return build()
    except KeyError as exc:
        raise DataError(f"{key}: {ann_file}: an entry lacks the field {exc}; is this the COCO format the "
                        "spec's format names?") from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise DataError(f"{key}: {ann_file}: unexpected content ({exc})") from None


def read_coco_panoptic(ann_file: Path, images: Path, panoptic: Path, labels: LabelMap,
                       key: str = "annotations") -> list[Record]:
    """COCO panoptic: annotations.json + a folder of segment PNGs + the image folder."""
    data = _coco(ann_file, key)
    infos = {im["id"]: im for im in data.get("images", [])}
    anns = data.get("annotations", [])
    if not anns:
        raise DataError(f"{key}: {ann_file}: no annotations")
    first = infos.get(anns[0].get("image_id"))
    if first is None:
        raise DataError(f"{key}: {ann_file}: annotation for image_id {anns[0].get('image_id')!r} has no entry in "
                        "'images'")
    split = key.rpartition(".")[0]
    images = find_image_root(images, first["file_name"], f"{split}.images")
    panoptic = find_image_root(panoptic, anns[0]["file_name"], f"{split}.panoptic")
    thing = labels.thing_mask
    out = []
    for a in anns:
        info = infos.get(a["image_id"])
        if info is None:
            raise DataError(f"{key}: {ann_file}: annotation for image_id {a['image_id']} has no entry in 'images'")
        segs = []
        for s in a["segments_info"]:
            if s["id"] <= 0:
                raise DataError(f"{key}: {ann_file}: image {info['file_name']}: segment id {s['id']} must be > 0")
            c = _class_of(s["category_id"], labels, f"{key}: {ann_file}: image {info['file_name']}")
            segs.append(Segment(s["id"], c, bool(thing[c]), bool(s.get("iscrowd", 0))))
        out.append(
            Record(images / info["file_name"], info["id"], info["height"], info["width"], "coco_panoptic",
                   segs, panoptic_png=panoptic / a["file_name"])
        )
    return out


def read_coco_instance(ann_file: Path, images: Path, labels: LabelMap, key: str = "annotations") -> list[Record]:
    """COCO instance JSON with polygon or RLE segmentations."""
    data = _coco(ann_file, key)
    by_image: dict = {im["id"]: [] for im in data.get("images", [])}
    for a in data.get("annotations", []):
        if a.get("id", 1) <= 0:
            raise DataError(f"{key}: {ann_file}: annotation id {a.get('id')} must be > 0")
        by_image.setdefault(a["image_id"], []).append(a)
    if not data.get("images"):
        raise DataError(f"{key}: {ann_file}: no images")
    images = find_image_root(images, data["images"][0]["file_name"], f"{key.rpartition('.')[0]}.images")
    thing = labels.thing_mask
    out = []
    for im in data["images"]:
        segs = []
        for n, a in enumerate(by_image[im["id"]], start=1):
            c = _class_of(a["category_id"], labels, f"{key}: {ann_file}: image {im['file_name']}")
            segs.append(Segment(n, c, bool(thing[c]), bool(a.get("iscrowd", 0))))
        out.append(Record(images / im["file_name"], im["id"], im["height"], im["width"], "coco", segs,
                          coco_anns=by_image[im["id"]]))
    return out


def read_semantic_jsonl(ann_file: Path, images: Path | None, labels: LabelMap,
                        key: str = "annotations") -> list[Record]:
    """Semantic JSONL lines {"img": ..., "segm": ...}; relative paths resolve against the image folder."""
    base = images or ann_file.parent
    out = []
    try:
        lines = ann_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{key}: {ann_file} is not a UTF-8 JSONL file ({exc.reason}); is it the right file?") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            img, segm = base / item["img"], base / item["segm"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{key}: {ann_file}:{n}: expected {{\"img\": ..., \"segm\": ...}} ({exc})") from None
        if not segm.exists() and (ann_file.parent / item["segm"]).exists():
            segm = ann_file.parent / item["segm"]
        out.append(Record(img, n, 0, 0, "semantic", semantic_png=segm))
    if not out:
        raise DataError(f"{key}: {ann_file} lists no images")
    return out


def read_mask_folder(masks: Path, images: Path | None, key: str, binary_255: bool = False) -> list[Record]:
    """SegFormer's layout: every image of the image folder with the PNG of the same relative name (any image
    suffix -> .png) in the mask folder; an image without its mask is an error naming it."""
    if images is None:
        raise DataError(f"{key}: a mask folder needs the split's images folder too")
    out, missing = [], []
    for img in list_images(images, key.replace("annotations", "images")):
        mask = masks / img.relative_to(images).with_suffix(".png")
        if not mask.is_file():
            missing.append(img.relative_to(images).as_posix())
            continue
        out.append(Record(img, img.relative_to(images).with_suffix("").as_posix(), 0, 0, "semantic",
                          semantic_png=mask, binary_255=binary_255))
    if missing:
        raise DataError(f"{key}: {len(missing)} images of {images} have no mask in {masks} (named like the image, "
                        f".png): {', '.join(missing[:5])}")
    return out


# ----------------------------------------------------------------------------- file validation
@dataclass(frozen=True)
class Origin:
    """Where a staged folder came from: its spec key and the value the spec gives (an archive, folder or URL)."""

    key: str
    uri: str
    root: Path


def describe(path: Path, origins: list[Origin]) -> str:
    """A staged file as the user knows it: `key: member in archive` for a file extracted from an archive."""
    for o in origins:
        try:
            rel = path.relative_to(o.root)
        except ValueError:
            continue
        if is_archive(o.uri) or "://" in o.uri:
            try:  # the member name as the archive lists it (with any wrapper folder the staging unwrapped)
                parts = path.relative_to(cache_root()).parts
                rel = Path(*parts[2:]) if len(parts) > 2 and parts[1] == "data" else rel
            except ValueError:
                pass
            return f"{o.key}: {rel} in {o.uri}"
        return f"{o.key}: {path}"
    return str(path)


# Files already decoded in this process, by (path, size, mtime): an AutoML study trains many trials on one dataset.
_DECODED: set[tuple[str, int, int]] = set()


class _Undecodable(Exception):
    """The header reads but the pixels do not (a truncated or corrupt file)."""


def _open(path: Path, deep: bool, content: Callable[[Image.Image], str | None] | None = None) -> tuple[int, int]:
    """(width, height) from the header; with `deep`, the whole file decoded too and `content` asked what is wrong
    with its pixels (a problem raises _BadContent; the file is remembered as checked only when it is right)."""
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    with Image.open(path) as im:
        size = im.size
        if deep and memo not in _DECODED:
            try:
                im.load()
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
                raise _Undecodable(f"{type(exc).__name__}: {exc}") from None
            if content is not None and (problem := content(im)):
                raise _BadContent(problem)
            _DECODED.add(memo)
    return size


class _BadContent(Exception):
    """The file decodes but its values contradict the annotations or the label map."""


def _mask_content(rec: Record, allowed: set[int] | None, ann: str) -> Callable[[Image.Image], str | None] | None:
    """What `deep` checks in a mask's pixels: a panoptic PNG holds only the segments its annotation lists (others
    would silently train as void); a semantic mask only label-map ids, 0 and dataset.ignore_value."""
    if rec.panoptic_png is not None:
        listed = {s.id for s in rec.segments} | {0}

        def panoptic(im: Image.Image) -> str | None:
            extra = sorted(set(np.unique(rgb_to_id(np.asarray(im.convert("RGB")))).tolist()) - listed)
            return (f"holds segment ids {extra[:8]} that {ann} does not list in the segments_info of "
                    f"{rec.image.name}; re-export the PNG and its JSON together") if extra else None

        return panoptic
    if rec.semantic_png is not None and allowed is not None:

        def semantic(im: Image.Image) -> str | None:
            values = np.asarray(im)
            extra = sorted(set(np.unique(values[..., 0] if values.ndim == 3 else values).tolist()) - allowed)
            return (f"holds values {extra[:8]} that are neither ids of dataset.label_map nor 0 or "
                    f"dataset.ignore_value; add them to the label map or set them to dataset.ignore_value"
                    ) if extra else None

        return semantic
    return None


def _check_record(rec: Record, origins: list[Origin], deep: bool, ann: str,
                  allowed: set[int] | None = None) -> list[str]:
    """Problems with one record's files: missing, unreadable (or undecodable with `deep`, or with mask values the
    annotations do not explain), sizes that differ."""
    problems, sizes = [], {}
    mask = rec.panoptic_png or rec.semantic_png
    for role, path in (("image", rec.image), ("mask", mask)):
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"missing file {describe(path, origins)}")
            continue
        try:
            sizes[role] = _open(path, deep, _mask_content(rec, allowed, ann) if role == "mask" else None)
        except _Undecodable as exc:
            problems.append(f"{describe(path, origins)} cannot be decoded ({exc}); replace it or remove it from the "
                            "annotations")
        except _BadContent as exc:
            problems.append(f"{describe(path, origins)} {exc}")
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; each names a broken file
            why = str(exc).replace(f" '{path}'", "") or type(exc).__name__
            problems.append(f"{describe(path, origins)} cannot be read as an image ({why}); replace it or remove "
                            "it from the annotations")
    if "image" in sizes and "mask" in sizes and sizes["image"] != sizes["mask"]:
        (iw, ih), (mw, mh) = sizes["image"], sizes["mask"]
        kind = "panoptic PNG" if rec.panoptic_png else "semantic mask"
        problems.append(f"image {describe(rec.image, origins)} is {iw}x{ih} but its {kind} "
                        f"{describe(mask, origins)} is {mw}x{mh}; an image and its mask must be the same size")
    elif rec.kind == "coco" and "image" in sizes and sizes["image"] != (rec.width, rec.height):
        iw, ih = sizes["image"]
        problems.append(f"image {describe(rec.image, origins)} is {iw}x{ih} but {ann} gives it "
                        f"{rec.width}x{rec.height}; the masks are drawn at the annotated size, so they must agree")
    return problems


def check_records(records: list[Record], what: str, origins: list[Origin] | None = None, deep: bool = False,
                  annotations: str = "annotations", allowed: set[int] | None = None) -> None:
    """Every referenced file exists and opens as an image (header only, or fully decoded with `deep`), and each
    image has the size of its mask; one error lists the first problems found, each naming the file and spec key."""
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check") as pool:  # PIL releases the GIL
        found = [p for ps in pool.map(lambda r: _check_record(r, origins or [], deep, annotations, allowed), records)
                 for p in ps]
    if found:
        more = f"\n    ... and {len(found) - 10} more" if len(found) > 10 else ""
        count = "1 problem" if len(found) == 1 else f"{len(found)} problems"
        raise DataError(f"{what}: {count} with the files {annotations} lists:\n    "
                        + "\n    ".join(found[:10]) + more)


def stage_input(uri: str, key: str) -> Path:
    """Stage one spec value, with errors that name its key; an archive or folder holding no file is an error."""
    try:
        path = stage(uri, key)
    except DataError as exc:
        raise (exc if str(exc).startswith(key) else DataError(f"{key}: {exc}")) from None
    except OSError as exc:
        if is_archive(str(uri)):
            raise DataError(f"{key}: {uri} is an empty archive (no files in it); re-create it from the image "
                            "folder") from None
        raise DataError(f"{key}: cannot read {uri} ({exc})") from None
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        kind = "archive" if is_archive(str(uri)) else "folder"
        raise DataError(f"{key}: {uri} is an empty {kind} (no files in it)")
    return path


def read_split(
    annotations: str | None, images: str | None, panoptic: str | None, fmt: str, labels: LabelMap, what: str,
    deep: bool = False, ignore_value: int = 255, binary_255: bool = False,
) -> list[Record]:
    """Stage and read one split, validating ids, classes and files (headers; every pixel with `deep`)."""
    if not annotations:
        raise DataError(f"{what}.annotations is not set")
    key = f"{what}.annotations"
    ann = stage_input(annotations, key)
    if ann.is_dir() and fmt not in ("auto", "masks"):
        raise DataError(f"{key}: {annotations} is a folder; give the annotation file (annotations.json)")
    origins = []
    img = stage_input(images, f"{what}.images") if images else None
    if img is not None:
        origins.append(Origin(f"{what}.images", str(images), img))
    kind = detect_format(ann, key) if fmt == "auto" else fmt
    if kind == "coco_panoptic":
        if img is None or not panoptic:
            raise DataError(f"{what}: COCO panoptic needs {what}.images and {what}.panoptic")
        pan = stage_input(panoptic, f"{what}.panoptic")
        origins.append(Origin(f"{what}.panoptic", str(panoptic), pan))
        records = _fields(key, ann, lambda: read_coco_panoptic(ann, img, pan, labels, key))
    elif kind == "coco":
        if img is None:
            raise DataError(f"{what}.images is not set")
        records = _fields(key, ann, lambda: read_coco_instance(ann, img, labels, key))
    elif kind == "masks":
        records = read_mask_folder(ann, img, key, binary_255)
        origins.append(Origin(key, str(annotations), ann))
    else:
        records = _fields(key, ann, lambda: read_semantic_jsonl(ann, img, labels, key))
        origins.append(Origin(key, str(annotations), ann.parent))
    allowed = set(labels.index) | {0, ignore_value}  # what a semantic mask may hold (mapped palette ids too)
    if binary_255:
        allowed |= {255}
    check_records(records, what, origins, deep, f"{key} ({ann})", allowed)
    log.info("%s: %d images (%s)%s", what, len(records), kind, ", every file decoded" if deep else "")
    return records


def labels_from_annotations(annotations: str, contiguous: bool, key: str = "dataset.train.annotations") -> LabelMap:
    """Fallback label map from a COCO file's categories when dataset.label_map is not set."""
    ann = stage_input(annotations, key)
    if ann.suffix == ".jsonl":
        raise DataError("semantic JSONL data needs dataset.label_map")
    data = _coco(ann, key)
    return LabelMap.from_list(data.get("categories", []), contiguous, f"{key}: {ann} categories", min_id=1)


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
    if rec.binary_255:
        raw = (raw > 127).astype(np.int64)
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
