"""Repeated timing: warm-up runs first, then a median with its min and max."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Seconds (or any sample unit) over repeated runs."""

    median: float
    min: float
    max: float
    runs: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            raise ValueError("samples: at least one is needed")
        return cls(statistics.median(samples), min(samples), max(samples), tuple(samples))

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": len(self.runs), "runs": list(self.runs)}


def measure(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None] = lambda: None) -> Stats:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; `sync` waits for a device to finish."""
    for _ in range(warmup):
        fn()
        sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return Stats.of(samples)


def percentiles(samples: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Linear-interpolated percentiles ('p50', 'p95', ...); with few samples p99 is close to the max."""
    values = np.asarray(samples, dtype=float)
    return {f"p{p}": float(np.percentile(values, p)) for p in points}
