"""`ImageEngine` over the one denoising loop: what every backend shares once its runners are built.

A backend subclasses `PipelineEngine`, builds an `SDXLTurboPipeline` from its runners in `load()`,
and gets generate, truncation, warm-up and close from here.
"""

from __future__ import annotations

import gc
from typing import Sequence

import numpy as np
import torch

from engines.base import EngineInfo, EngineLimits, GenerationRequest, ImageEngine, SelfTestFailed
from engines.core.golden import GoldenImage, golden_request, self_test_problem
from engines.core.pipeline import SDXLTurboPipeline


class PipelineEngine(ImageEngine):
    def __init__(self, name: str, limits: EngineLimits) -> None:
        self.limits = limits
        self.info = EngineInfo(name=name, model_fingerprint="")
        self._pipeline: SDXLTurboPipeline | None = None
        self.golden: GoldenImage | None = None  # the image its build recorded (engine selection sets it)

    @property
    def pipeline(self) -> SDXLTurboPipeline:
        if self._pipeline is None:
            raise RuntimeError("the engine is not loaded: call load() first")
        return self._pipeline

    def generate(self, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
        with torch.inference_mode():
            return list(self.pipeline(requests))

    def warm_up(self) -> None:
        """The golden image (see engines/core/golden.py) at a size the engine was built for, checked:
        raises SelfTestFailed when it shows a broken engine."""
        width, height = self.warm_up_size if self.golden is None else (self.golden.width, self.golden.height)
        (image,) = self.generate([golden_request(width, height)])
        problem = self_test_problem(image, self.golden, self.info.name)
        if problem is not None:
            raise SelfTestFailed(problem)

    @property
    def warm_up_size(self) -> tuple[int, int]:
        limits = self.limits
        if limits.sizes:
            return (512, 512) if (512, 512) in limits.sizes else limits.sizes[0]
        side = min(max(512, limits.min_size), limits.max_size)
        return (side - side % limits.size_multiple,) * 2

    def last_stage_seconds(self) -> dict[str, float]:
        return dict(self.pipeline.stage_seconds)

    def truncated_fields(self, request: GenerationRequest) -> list[str]:
        encoders = self.pipeline.text_encoder
        return [name for name in ("prompt", "negative_prompt") if encoders.is_truncated(getattr(request, name))]

    def close(self) -> None:
        self._pipeline = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
