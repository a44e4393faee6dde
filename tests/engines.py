"""An ImageEngine whose speed the test sets: real interface, numpy images, no model.

Used where timing must be controlled (health while busy, queue behaviour) or where a test must
prove that the model was never called.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from engines.base import EngineInfo, EngineLimits, GenerationRequest, ImageEngine


class ControlledEngine(ImageEngine):
    def __init__(self, delay_s: float = 0.0, limits: EngineLimits | None = None) -> None:
        self.delay_s = delay_s
        self.limits = limits or EngineLimits()
        self.info = EngineInfo(name="controlled-test", model_fingerprint="test:controlled", selection_reason="test")
        self.calls: list[list[GenerationRequest]] = []
        self.release = threading.Event()  # set() by default; clear() to hold generate() until set again
        self.release.set()
        self.started = threading.Event()  # set when a generate() call begins
        self.loaded = self.closed = False

    def load(self) -> None:
        self.loaded = True

    def warm_up(self) -> None:
        """No warm-up image: the tests count every call to generate()."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
        self.calls.append(list(requests))
        self.started.set()
        self.release.wait(timeout=30)
        time.sleep(self.delay_s)
        return [
            np.random.default_rng(r.seed).integers(0, 256, (r.height, r.width, 3), dtype=np.uint8) for r in requests
        ]

    @property
    def requests_seen(self) -> int:
        return sum(len(batch) for batch in self.calls)

    def close(self) -> None:
        self.closed = True
