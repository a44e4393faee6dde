"""The golden self-test: an engine must make again the image its build recorded.

`build_engines.py` makes one image for a fixed prompt and seed with the engine it built and keeps a
32x32 copy and its statistics in manifest.json. At warm-up the service makes the same image and
compares: a corrupted plan, a wrong driver or a VAE that overflowed (NaN, black) shows up there,
before any request, instead of as noise in every answer. Without a build (PyTorch) the warm-up image
must at least be finite and not flat.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.base import GenerationRequest

GOLDEN_PROMPT = "a red apple on a wooden table, studio light"
GOLDEN_SEED = 1234
THUMBNAIL_SIDE = 32  # averages 16x16 blocks of a 512x512 image: robust to per-pixel rounding
# Mean absolute difference of the thumbnails (0-255) allowed for each kind of arithmetic. Full
# precision repeats itself to a fraction of a level; bf16/fp16 may land elsewhere on another CPU or
# GPU of the same kind. A broken engine differs by tens of levels.
TOLERANCE_FULL, TOLERANCE_HALF = 2.0, 8.0
FLAT_STD = 1.0  # a standard deviation under one level: a constant image (black, NaN turned to 0)


def golden_request(width: int, height: int) -> GenerationRequest:
    return GenerationRequest(prompt=GOLDEN_PROMPT, seed=GOLDEN_SEED, width=width, height=height)


def tolerance_for(engine_name: str) -> float:
    """Half-precision arithmetic anywhere in the engine's name (fp16, bf16) gets the looser bound."""
    parts = set(engine_name.split("-"))
    return TOLERANCE_HALF if parts & {"fp16", "bf16"} else TOLERANCE_FULL


def thumbnail(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 32x32x3 float32, each pixel the mean of its block."""
    from PIL import Image

    small = Image.fromarray(image).resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


@dataclass(frozen=True)
class GoldenImage:
    engine: str  # the engine name (numerics) that made it
    width: int
    height: int
    thumbnail: np.ndarray  # 32x32x3 float32
    mean: float
    std: float

    @classmethod
    def of(cls, image: np.ndarray, engine: str) -> GoldenImage:
        return cls(engine, image.shape[1], image.shape[0], thumbnail(image), float(image.mean()), float(image.std()))

    def to_json(self) -> dict[str, Any]:
        pixels = np.clip(np.rint(self.thumbnail), 0, 255).astype(np.uint8)
        return {
            "engine": self.engine, "prompt": GOLDEN_PROMPT, "seed": GOLDEN_SEED, "width": self.width, "height": self.height,
            "thumbnail_rgb_base64": base64.b64encode(pixels.tobytes()).decode("ascii"),
            "mean": round(self.mean, 4), "std": round(self.std, 4),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GoldenImage:
        raw = np.frombuffer(base64.b64decode(data["thumbnail_rgb_base64"]), dtype=np.uint8)
        pixels = raw.reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3).astype(np.float32)
        return cls(data["engine"], int(data["width"]), int(data["height"]), pixels, float(data["mean"]), float(data["std"]))


def self_test_problem(image: np.ndarray, golden: GoldenImage | None, engine_name: str) -> str | None:
    """Why the warm-up image shows a broken engine, or None when it passes."""
    if not np.isfinite(image.astype(np.float32)).all():
        return "the warm-up image has non-finite pixels"
    if image.std() < FLAT_STD:
        return f"the warm-up image is flat (every pixel about {image.mean():.0f}): the decoder overflowed or the weights are broken"
    if golden is None:
        return None
    difference = float(np.abs(thumbnail(image) - golden.thumbnail).mean())
    tolerance = tolerance_for(engine_name)
    if difference > tolerance:
        return (
            f"the engine no longer makes the image its build recorded: mean difference {difference:.1f} levels "
            f"(tolerance {tolerance:g} for {engine_name}; mean {image.mean():.1f}/{golden.mean:.1f}, "
            f"std {image.std():.1f}/{golden.std:.1f}); rebuild the engines"
        )
    return None
