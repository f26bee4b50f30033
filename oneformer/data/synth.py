"""A deterministic synthetic dataset in TAO's bucket layout: textured stuff backgrounds and thing shapes."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from oneformer.data.readers import id_to_rgb

log = logging.getLogger(__name__)

CATEGORIES = [
    {"id": 1, "name": "sky", "isthing": False, "color": [70, 130, 180]},
    {"id": 2, "name": "grass", "isthing": False, "color": [60, 160, 60]},
    {"id": 3, "name": "road", "isthing": False, "color": [128, 64, 128]},
    {"id": 4, "name": "circle", "isthing": True, "color": [220, 20, 60]},
    {"id": 5, "name": "square", "isthing": True, "color": [250, 170, 30]},
    {"id": 6, "name": "triangle", "isthing": True, "color": [0, 0, 230]},
]
# Appearance per class: base RGB and texture strength, distinct enough to learn in minutes on a CPU.
_LOOK = {1: ((120, 170, 235), 10), 2: ((50, 140, 40), 35), 3: ((90, 90, 95), 20),
         4: ((230, 40, 40), 12), 5: ((240, 200, 30), 12), 6: ((40, 60, 220), 12)}


def _texture(rng: np.random.Generator, h: int, w: int, cid: int) -> np.ndarray:
    base, amp = _LOOK[cid]
    noise = rng.normal(0, amp, (h // 4 + 1, w // 4 + 1, 1))
    noise = np.kron(noise, np.ones((4, 4, 1)))[:h, :w]
    jitter = rng.normal(0, 8, 3)
    return np.clip(np.asarray(base) + jitter + noise, 0, 255)


def _shape_mask(rng: np.random.Generator, h: int, w: int, cid: int) -> np.ndarray:
    size = int(rng.integers(min(h, w) // 7, min(h, w) // 3))
    cx, cy = int(rng.integers(size, w - size)), int(rng.integers(size, h - size))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if cid == 4:
        draw.ellipse([cx - size, cy - size, cx + size, cy + size], fill=1)
    elif cid == 5:
        draw.rectangle([cx - size, cy - size, cx + size, cy + size], fill=1)
    else:
        draw.polygon([(cx, cy - size), (cx - size, cy + size), (cx + size, cy + size)], fill=1)
    return np.asarray(canvas).astype(bool)


def make_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One image, its segment-id map and segments_info (COCO panoptic style)."""
    h = w = size
    top, bottom = (int(c) for c in rng.choice([1, 2, 3], 2, replace=False))
    xs = np.arange(w)
    boundary = (h * rng.uniform(0.35, 0.6) + h * 0.08 * np.sin(xs / w * 2 * np.pi * rng.uniform(0.5, 2))).astype(int)
    upper = np.arange(h)[:, None] < boundary[None, :]
    image = np.where(upper[..., None], _texture(rng, h, w, top), _texture(rng, h, w, bottom))
    ids = np.where(upper, 1, 2).astype(np.int32)
    segments = [{"id": 1, "category_id": top}, {"id": 2, "category_id": bottom}]
    for n in range(int(rng.integers(1, 4))):
        cid = int(rng.integers(4, 7))
        mask = _shape_mask(rng, h, w, cid)
        seg_id = 3 + n
        image[mask] = _texture(rng, h, w, cid)[mask]
        ids[mask] = seg_id
        segments.append({"id": seg_id, "category_id": cid})
    infos = []
    for s in segments:
        m = ids == s["id"]
        if not m.any():
            continue
        ys, xs_ = np.nonzero(m)
        bbox = [int(xs_.min()), int(ys.min()), int(xs_.max() - xs_.min() + 1), int(ys.max() - ys.min() + 1)]
        infos.append({**s, "iscrowd": 0, "area": int(m.sum()), "bbox": bbox})
    return image.astype(np.uint8), ids, infos


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write_tar(path: Path, wrapper: str, files: dict[str, bytes]) -> None:
    """A deterministic .tar.gz whose members sit in a wrapper folder, as TAO buckets often have."""
    import gzip

    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for name in sorted(files):
                info = tarfile.TarInfo(f"{wrapper}/{name}")
                info.size, info.mtime, info.mode = len(files[name]), 0, 0o644
                tar.addfile(info, io.BytesIO(files[name]))


def _write_split(out: Path, name: str, count: int, size: int, rng: np.random.Generator, start_id: int) -> None:
    from pycocotools import mask as mask_utils

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "semantic").mkdir(exist_ok=True)
    images, pans, pan_anns, img_infos, inst_anns, jsonl = {}, {}, [], [], [], []
    for k in range(count):
        image_id = start_id + k
        fname = f"{name}_{k:05d}.jpg"
        image, ids, infos = make_image(rng, size)
        images[fname] = _encode(image, "JPEG")
        pans[fname.replace(".jpg", ".png")] = _encode(id_to_rgb(ids), "PNG")
        img_infos.append({"id": image_id, "file_name": fname, "height": size, "width": size})
        pan_anns.append({"image_id": image_id, "file_name": fname.replace(".jpg", ".png"), "segments_info": infos})
        semantic = np.zeros(ids.shape, np.uint8)
        for s in infos:
            semantic[ids == s["id"]] = s["category_id"]
            if s["category_id"] >= 4:
                rle = mask_utils.encode(np.asfortranarray(ids == s["id"]))
                rle["counts"] = rle["counts"].decode()
                inst_anns.append({"id": len(inst_anns) + 1, "image_id": image_id, "category_id": s["category_id"],
                                  "segmentation": rle, "area": s["area"], "bbox": s["bbox"], "iscrowd": 0})
        (folder / "semantic" / fname.replace(".jpg", ".png")).write_bytes(_encode(semantic, "PNG"))
        jsonl.append({"img": fname, "segm": f"semantic/{fname.replace('.jpg', '.png')}"})
    _write_tar(folder / "images.tar.gz", "images", images)
    _write_tar(folder / "images_panoptic.tar.gz", "images_panoptic", pans)
    cats = [{k: c[k] for k in ("id", "name", "isthing", "color")} for c in CATEGORIES]
    (folder / "annotations.json").write_text(
        json.dumps({"images": img_infos, "annotations": pan_anns, "categories": cats}))
    (folder / "instances.json").write_text(json.dumps({"images": img_infos, "annotations": inst_anns,
                                                        "categories": [c for c in cats if c["isthing"]]}))
    (folder / "semantic.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jsonl))
    (folder / "label_map.json").write_text(json.dumps(cats, indent=1))


def _write_images_only(out: Path, name: str, count: int, size: int, rng: np.random.Generator) -> None:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"{name}_{k:05d}.jpg": _encode(make_image(rng, size)[0], "JPEG") for k in range(count)}
    _write_tar(folder / "images.tar.gz", "images", files)


def generate(out: str | Path, train: int = 64, val: int = 16, size: int = 128, seed: int = 0,
             inference: int = 4, calibration: int = 8, arch: str = "oneformer") -> Path:
    """Write the network's dataset layout and a ready spec.yaml (its CPU smoke preset, in its TAO key names) under
    `out`; returns the spec path. The same seed gives the same images for every network."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if arch == "segformer":
        return _segformer(out, train, val, size, rng, inference)
    _write_split(out, "train", train, size, rng, 1)
    _write_split(out, "eval", val, size, rng, 100000)
    _write_images_only(out, "inference", inference, size, rng)
    _write_images_only(out, "calibration", calibration, size, rng)
    spec = _mask2former_spec(out) if arch == "mask2former" else _oneformer_spec(out)
    spec["model"]["sem_seg_head"]["num_classes"] = len(CATEGORIES)
    spec["results_dir"] = str(out / "results")
    spec.setdefault("inference", {})["images_dir"] = str(out / "inference/images.tar.gz")
    path = out / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log.info("synthetic %s dataset: %d train, %d val images of %dpx in %s", arch, train, val, size, out)
    return path


def _oneformer_spec(out: Path) -> dict:
    """OneFormer's bucket: images.tar.gz, images_panoptic.tar.gz, annotations.json (panoptic), label_map.json."""
    from oneformer.presets import preset

    spec = preset("smoke")
    spec["dataset"].update({
        "label_map": str(out / "train" / "label_map.json"),
        **{split: {**spec["dataset"].get(split, {}), "images": str(out / f"{folder}/images.tar.gz"),
                   "annotations": str(out / f"{folder}/annotations.json"),
                   "panoptic": str(out / f"{folder}/images_panoptic.tar.gz")}
           for split, folder in (("train", "train"), ("val", "eval"), ("test", "eval"))},
        "quant_calibration_dataset": {"images_dir": str(out / "calibration/images.tar.gz")},
    })
    return spec


def _mask2former_spec(out: Path) -> dict:
    """TAO Mask2Former's bucket names: annotations.json (instances), annotations_panoptic.json,
    label_map_panoptic.json, and its spec keys (type, img_dir, panoptic_json, panoptic_dir, instance_json)."""
    from oneformer.presets import preset

    for folder in ("train", "eval"):
        d = out / folder
        (d / "annotations.json").replace(d / "annotations_panoptic.json")
        (d / "instances.json").replace(d / "annotations.json")
        (d / "label_map.json").replace(d / "label_map_panoptic.json")
    spec = preset("mask2former_smoke")
    spec["dataset"].update({
        "label_map": str(out / "train" / "label_map_panoptic.json"),
        **{split: {**spec["dataset"].get(split, {}), "type": "coco_panoptic",
                   "img_dir": str(out / f"{folder}/images.tar.gz"),
                   "panoptic_json": str(out / f"{folder}/annotations_panoptic.json"),
                   "panoptic_dir": str(out / f"{folder}/images_panoptic.tar.gz"),
                   "instance_json": str(out / f"{folder}/annotations.json")}
           for split, folder in (("train", "train"), ("val", "eval"), ("test", "eval"))},
        "quant_calibration_dataset": {"images_dir": str(out / "calibration/images.tar.gz")},
    })
    return spec


def _segformer(out: Path, train: int, val: int, size: int, rng: np.random.Generator, inference: int) -> Path:
    """TAO SegFormer's layout: <root>/images/{train,val,test} and <root>/masks/{train,val}, one label-id PNG per
    image (mask value = palette label_id = category id - 1), and a spec with dataset.segment and its palette."""
    from oneformer.presets import preset

    root = out / "data"
    for split, count in (("train", train), ("val", val), ("test", inference)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        if split != "test":
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            image, ids, infos = make_image(rng, size)
            name = f"{split}_{k:05d}"
            (root / "images" / split / f"{name}.jpg").write_bytes(_encode(image, "JPEG"))
            if split != "test":
                mask = np.full(ids.shape, 255, np.uint8)
                for seg in infos:
                    mask[ids == seg["id"]] = seg["category_id"] - 1
                (root / "masks" / split / f"{name}.png").write_bytes(_encode(mask, "PNG"))
    spec = preset("segformer_smoke")
    spec["results_dir"] = str(out / "results")
    spec["dataset"]["segment"].update({
        "root_dir": str(root), "num_classes": len(CATEGORIES),
        "palette": [{"seg_class": c["name"], "rgb": c["color"], "label_id": c["id"] - 1, "mapping_class": c["name"]}
                    for c in CATEGORIES]})
    path = out / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log.info("synthetic segformer dataset: %d train, %d val images of %dpx in %s", train, val, size, root)
    return path
