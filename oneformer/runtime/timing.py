"""Latency of predictors measured side by side: the same prepared images, interleaved round by round, so drift of
the machine (other load, clock changes) hits every backend alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def median_ms(backends: dict[str, Callable[[torch.Tensor], Any]], pixels: list[torch.Tensor], runs: int
              ) -> dict[str, float]:
    """Median milliseconds per call of each backend, after one warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in backends}
    for fn in backends.values():
        fn(pixels[0])
    for r in range(runs):
        for name, fn in backends.items():
            t0 = time.perf_counter()
            fn(pixels[r % len(pixels)])
            times[name].append(time.perf_counter() - t0)
    return {name: round(1000 * statistics.median(v), 1) for name, v in times.items()}
