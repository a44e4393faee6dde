"""SDXLComponents: the pieces of an SDXL Turbo pipeline, as loaded from any source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ALL_PARTS = frozenset({"text", "unet", "vae"})  # which weights a load reads; the tokenizers always


@dataclass
class SDXLComponents:
    """The pieces of an SDXL Turbo pipeline, as torch modules on the CPU."""

    tokenizer: Any
    tokenizer_2: Any
    text_encoder: torch.nn.Module | None  # None once a build has dropped it (nothing is built from it)
    text_encoder_2: torch.nn.Module | None
    unet: torch.nn.Module | None  # None when loaded for the text side only
    vae: torch.nn.Module | None
    scheduler_config: dict[str, Any]
    fingerprint: str
    force_zeros_for_empty_prompt: bool = True
    tiny_vae: bool = False  # `vae` is the tiny autoencoder (TAESD-XL), not the SDXL VAE
    vae_scaling_factor: float = 0.13025  # the decoder's: latents / factor go into it
