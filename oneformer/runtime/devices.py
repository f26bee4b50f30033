"""The device an evaluate, inference or engine build runs on, from TAO's num_gpus and gpu_ids keys."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from oneformer.errors import OneFormerError

log = logging.getLogger(__name__)


def inference_device(model: Path, num_gpus: int, gpu_ids: list[int], section: str) -> str | None:
    """Where `model` runs: cuda:<first of gpu_ids> (the CPU where num_gpus is 0 or no CUDA device is visible; None
    for an ONNX file, which ONNX Runtime runs on the CPU). One device: these actions batch images (batch_size) rather
    than spread them over GPUs, so more than one is noted, not used."""
    if model.suffix.lower() == ".onnx":
        return None
    if num_gpus == 0:
        return "cpu"
    if not torch.cuda.is_available():
        log.info("%s: no CUDA device visible; running on the CPU (%s.num_gpus=%d)", section, section, num_gpus)
        return "cpu"
    ids = list(gpu_ids) or [0]
    if max(num_gpus, len(ids)) > 1:
        log.info("%s runs on one device, cuda:%d (%s.num_gpus=%d, gpu_ids=%s): raise %s.batch_size to use it "
                 "fully", section, ids[0], section, num_gpus, ids, section)
    return cuda_device(ids[0], f"{section}.gpu_ids")


def cuda_device(index: int, key: str) -> str:
    """cuda:<index>, or an error naming the key when this machine has no such GPU."""
    count = torch.cuda.device_count()
    if count == 0:
        raise OneFormerError(f"{key}: GPU {index} was asked for, but this machine has no CUDA device")
    if not 0 <= index < count:
        raise OneFormerError(f"{key}: GPU {index} does not exist on this machine ({count} CUDA device"
                             f"{'' if count == 1 else 's'}: ids 0-{count - 1}); set {key} to one of them")
    return f"cuda:{index}"


THREADS_ENV = "ONEFORMER_THREADS"


def cpu_threads(threads: int = 0) -> int:
    """The CPU threads an ONNX Runtime or OpenVINO predictor uses: `threads` where given, else $ONEFORMER_THREADS
    (set it on a machine shared with other work, so predictors do not each take every core), else 0, the runtime's
    own choice (all cores)."""
    if threads:
        return threads
    value = os.environ.get(THREADS_ENV, "0").strip() or "0"
    if not value.isdigit():
        raise OneFormerError(f"${THREADS_ENV}={value!r}: give a whole number of CPU threads (0 or unset: all cores)")
    return int(value)
