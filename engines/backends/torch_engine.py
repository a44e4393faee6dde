"""PyTorch: the CPU fallback (bf16 where the processor has it, else fp32) and CUDA without engines."""

from __future__ import annotations

import logging
from pathlib import Path

from engines.base import EngineLimits
from engines.backends.torch_runners import TINY_VAE_NO_IMAGE_TO_IMAGE, build_torch_pipeline, use_all_cores
from engines.core.engine import PipelineEngine
from engines.core.numerics import choose_numerics
from engines.models.sources import load_components

logger = logging.getLogger(__name__)


class TorchEngine(PipelineEngine):
    """The SDXL Turbo loop on PyTorch modules; the path that always works."""

    def __init__(
        self, model: str, device: str = "auto", precision: str = "auto", presets_dir: Path | None = None, vae: str = "full",
        revision: str | None = None,
    ) -> None:
        self.model, self.vae, self.revision = model, vae, revision
        self.numerics = choose_numerics(device, precision)
        self.presets_dir = presets_dir
        tiny = vae == "tiny"
        limits = EngineLimits(image_to_image=not tiny, image_to_image_reason=TINY_VAE_NO_IMAGE_TO_IMAGE if tiny else "")
        super().__init__(self.numerics.name(tiny_vae=tiny), limits)

    def load(self) -> None:
        use_all_cores(self.numerics)
        components = load_components(self.model, self.numerics.dtype, self.presets_dir, self.vae, revision=self.revision)
        self.info.model_fingerprint = components.fingerprint
        self._pipeline = build_torch_pipeline(components, self.numerics)
        logger.info("loaded %s as %s (%s)", self.model, self.info.name, components.fingerprint)
