"""The one door from the HTTP layer to inference: `ImageEngine` and the values it trades in.

`service/` imports this module only; it never sees torch, ONNX Runtime, OpenVINO or TensorRT.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

DEFAULT_MODEL = "stabilityai/sdxl-turbo"

# The choices, declared once: the service's settings, build_engines.py and the benchmarks offer these.
ENGINES = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")  # --engine
DEVICES = ("auto", "cpu", "cuda")  # --device
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # --precision at serve time (int8: OpenVINO, opt-in)
# build_engines.py --precision: the UNet's in TensorRT; int8 (with --target cpu): NNCF-quantized OpenVINO IR
BUILD_PRECISIONS = ("fp16", "bf16", "fp32", "int8")
TARGETS = ("gpu", "cpu")  # build_engines.py --target: TensorRT plans, or OpenVINO IR
VAES = ("full", "tiny")  # --vae: the SDXL VAE, or the tiny autoencoder (TAESD-XL)
DEFAULT_STRENGTH = 0.5  # image-to-image: SDXL Turbo's model card uses 0.5 with 2 steps


@dataclass(frozen=True)
class GenerationRequest:
    """A validated, normalised request: every field concrete, the seed included."""

    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = 1
    guidance_scale: float = 0.0
    seed: int = 0
    width: int = 512
    height: int = 512
    # Image-to-image: the input, HxWx3 uint8 at exactly width x height (the service decodes, resizes
    # and hashes it; the hash, not the array, goes into cache keys), and how much of it is redrawn.
    image: np.ndarray | None = field(default=None, compare=False, repr=False)
    strength: float = DEFAULT_STRENGTH

    @property
    def uses_guidance(self) -> bool:
        """Classifier-free guidance runs only above 1 (diffusers' rule); it doubles the UNet batch."""
        return self.guidance_scale > 1.0

    @property
    def denoising_steps(self) -> int:
        """UNet steps actually run: all of them from noise, int(steps x strength) from an image (diffusers' rule)."""
        if self.image is None:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    def batch_signature(self) -> tuple[int, int, int, bool, float | None]:
        """Requests with the same signature can share one UNet batch (image-to-image: the same timesteps too)."""
        strength = None if self.image is None else self.strength
        return (self.width, self.height, self.num_inference_steps, self.uses_guidance, strength)


@dataclass(frozen=True)
class EngineLimits:
    """What the loaded engine can run; the request schema refuses anything outside it."""

    min_size: int = 256
    max_size: int = 1024
    size_multiple: int = 8
    max_batch: int = 4
    # Exact sizes a static engine was built for; None means any size in [min_size, max_size].
    sizes: tuple[tuple[int, int], ...] | None = None
    # Image-to-image needs a VAE encoder; engines built before it existed have none. The reason
    # says what to do (e.g. the build_engines.py command that adds it).
    image_to_image: bool = True
    image_to_image_reason: str = ""

    def describe_sizes(self) -> str:
        if self.sizes is not None:
            return ", ".join(f"{w}x{h}" for w, h in self.sizes)
        return f"multiples of {self.size_multiple} from {self.min_size} to {self.max_size}"

    def supports(self, width: int, height: int) -> bool:
        if self.sizes is not None:
            return (width, height) in self.sizes
        return all(
            self.min_size <= v <= self.max_size and v % self.size_multiple == 0 for v in (width, height)
        )


@dataclass
class EngineInfo:
    """Identity of an engine: what made an image, for the cache key and the X-Engine header."""

    name: str  # backend and numerics, e.g. "torch-cpu-bf16"; goes to X-Engine
    model_fingerprint: str  # hub revision, or a hash of the weights
    selection_reason: str = ""  # why this backend was chosen (log, /readyz)


class EngineError(RuntimeError):
    """A failure inside an engine: the service answers 500 with a request id."""


class EngineUnavailable(EngineError):
    """The engine asked for cannot run on this machine (raised at start-up, never per request)."""


class SelfTestFailed(EngineError):
    """The warm-up image shows a broken engine (not the image its build recorded, flat, non-finite)."""


class ImageEngine(abc.ABC):
    """Life cycle: `load()` once, `warm_up()` once, `generate()` many times, `close()` once.

    Every method blocks; the service calls them off the event loop, one `generate` at a time.
    """

    info: EngineInfo
    limits: EngineLimits

    @abc.abstractmethod
    def load(self) -> None:
        """Read weights or compiled engines and move them where they run."""

    def warm_up(self) -> None:
        """Make one small image so that the first real request pays no lazy initialisation."""
        self.generate([GenerationRequest(prompt="warm-up", seed=0, width=512, height=512)])

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
        """Run a batch that shares `batch_signature()`; one HxWx3 uint8 image per request, in order.

        Each image equals what the request would get alone: every item keeps its own seed.
        """

    def last_stage_seconds(self) -> dict[str, float]:
        """Seconds per stage (text_encoders, unet, vae) of the last `generate` call, for metrics."""
        return {}

    def truncated_fields(self, request: GenerationRequest) -> list[str]:
        """Names of the prompt fields longer than the text encoders read (they are cut)."""
        return []

    def close(self) -> None:
        """Release memory and devices; the engine is unusable afterwards."""
