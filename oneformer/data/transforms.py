"""Augmentations on (image, segment-id map) pairs without torchvision: resize, crop, flip, pad."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from oneformer.spec import AugmentationConfig


def resize_pair(image: np.ndarray, ids: np.ndarray | None, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Bilinear for the image, nearest for the id map."""
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    if ids is None:
        return img, None
    return img, np.asarray(Image.fromarray(ids.astype(np.int32), mode="I").resize((w, h), Image.NEAREST))


def shortest_side_size(h: int, w: int, short: float, max_size: int) -> tuple[int, int]:
    """Output size with the shortest side at `short` and the longest at most `max_size`."""
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def train_transform(
    image: np.ndarray, ids: np.ndarray, cfg: AugmentationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random resize by shortest side, random crop, flip and fixed padding; returns (image, ids, valid)."""
    short = float(rng.choice(cfg.train_min_size)) * rng.uniform(cfg.min_scale, cfg.max_scale)
    h, w = shortest_side_size(*ids.shape, short, cfg.train_max_size)
    image, ids = resize_pair(image, ids, h, w)
    ch, cw = cfg.train_crop_size
    if h > ch or w > cw:
        y = int(rng.integers(0, max(h - ch, 0) + 1))
        x = int(rng.integers(0, max(w - cw, 0) + 1))
        image, ids = image[y : y + ch, x : x + cw], ids[y : y + ch, x : x + cw]
    if cfg.random_flip and rng.random() < 0.5:
        image, ids = image[:, ::-1], ids[:, ::-1]
    valid = np.ones(ids.shape, dtype=bool)
    if cfg.fixed_padding:
        image, ids, valid = pad_to(image, ids, valid, ch, cw)
    return np.ascontiguousarray(image), np.ascontiguousarray(ids), valid


def pad_to(
    image: np.ndarray, ids: np.ndarray, valid: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-pad bottom/right to (h, w); padded pixels are void and invalid."""
    ph, pw = max(h - image.shape[0], 0), max(w - image.shape[1], 0)
    if ph == 0 and pw == 0:
        return image, ids, valid
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
    return image, np.pad(ids, ((0, ph), (0, pw))), np.pad(valid, ((0, ph), (0, pw)))


def eval_size(h: int, w: int, cfg: AugmentationConfig) -> tuple[int, int]:
    """Evaluation resize: shortest side to test_min_size, longest capped at test_max_size."""
    return shortest_side_size(h, w, cfg.test_min_size, cfg.test_max_size)


def normalize(image: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 HWC RGB -> float CHW normalized with the spec's pixel mean/std (0-255 scale)."""
    t = torch.as_tensor(np.array(image, dtype=np.float32)).permute(2, 0, 1)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def pad_divisible(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad a [..., H, W] tensor bottom/right so H and W are multiples of `divisor`."""
    if divisor <= 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return torch.nn.functional.pad(x, (0, pw, 0, ph)) if ph or pw else x
