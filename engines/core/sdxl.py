"""SDXL's fixed facts, in one place: latent channels, the VAE's scale factor, the text encoders'
token limit, and the six time ids the UNet is conditioned on."""

from __future__ import annotations

import torch

LATENT_CHANNELS = 4
VAE_SCALE_FACTOR = 8  # image side / latent side
MAX_TOKENS = 77  # what CLIP reads; a longer prompt is cut
TIME_IDS = 6  # original size (h, w), crop top-left (y, x), target size (h, w)


def latent_shape(width: int, height: int, batch: int = 1) -> tuple[int, int, int, int]:
    return (batch, LATENT_CHANNELS, height // VAE_SCALE_FACTOR, width // VAE_SCALE_FACTOR)


def time_ids(width: int, height: int, batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """[batch, 6] float32: no crop, the image at its own size (what SDXL Turbo was trained for)."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device)
    return ids.repeat(batch, 1)
