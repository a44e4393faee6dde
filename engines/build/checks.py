"""Numeric checks of a converted component against torch on the same inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engines.core.specs import ModelDims, Size


def check_size(dims: ModelDims) -> Size:
    """A non-square size unlike the traced one: a shape baked in by mistake shows up as an error."""
    return (dims.size_multiple * 12, dims.size_multiple * 8)


@dataclass(frozen=True)
class NumericCheck:
    """How far the converted graph is from torch on the same inputs."""

    max_abs: float
    max_rel: float  # max |converted - torch| / max |torch|
    shape: str

    def describe(self) -> str:
        return f"max abs error {self.max_abs:.3g}, max relative error {self.max_rel:.3g} at {self.shape}"

    def to_json(self) -> dict[str, float | str]:
        return asdict(self)


def compare(actual: np.ndarray, expected: np.ndarray) -> NumericCheck:
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} against {expected.shape}")
    error = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    scale = float(np.max(np.abs(expected))) or 1.0
    return NumericCheck(error, error / scale, "x".join(map(str, expected.shape)))
