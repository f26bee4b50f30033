"""Overlays like TAO's inference pictures: the colored label map blended on the image, each segment named, and a
box around every instance."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from oneformer.runtime.postprocess import colorize
from oneformer.runtime.segment import Segmentation


def overlay(image: np.ndarray, result: Segmentation, palette: np.ndarray, opacity: float, labels: bool = True
            ) -> Image.Image:
    """The image with `result`'s classes blended in at `opacity`; with `labels`, class names (and scores) on each
    segment and a box around each instance (thing segments of the instance and panoptic tasks)."""
    label = result.labels
    color = colorize(np.where(label < 0, len(palette), label), palette)
    blend = np.where((label >= 0)[..., None], (1 - opacity) * image + opacity * color, image).astype(np.uint8)
    picture = Image.fromarray(blend)
    if not labels or not result.segments:
        return picture
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, min(image.shape[:2]) // 40))
    for seg in sorted(result.segments, key=lambda s: s["area"]):  # small ones last: their names stay readable
        mask = result.segment_ids == seg["id"]
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        cls = int(label[ys[0], xs[0]])
        rgb = tuple(int(c) for c in palette[cls]) if 0 <= cls < len(palette) else (255, 255, 255)
        text = seg["category"] if seg["score"] is None else f"{seg['category']} {seg['score']:.2f}"
        boxed = seg["isthing"] and result.task != "semantic"
        if boxed:
            draw.rectangle((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), outline=rgb,
                           width=max(1, min(image.shape[:2]) // 200))
            at = (int(xs.min()), int(ys.min()))
        else:  # the pixel of the segment nearest its centroid, so the name sits on the segment itself
            n = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            at = (int(xs[n]), int(ys[n]))
        left, top, right, bottom = draw.textbbox(at, text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=rgb)
        draw.text(at, text, font=font, fill=(0, 0, 0) if sum(rgb) > 382 else (255, 255, 255))
    return picture
