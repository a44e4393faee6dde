"""Pixels to bytes: the one place images are encoded (off the event loop; PIL releases the GIL)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Speed over size: level 1 costs a few percent more bytes and a fraction of level 6's time.
PNG_COMPRESS_LEVEL = 1
LOSSY_QUALITY = 90


def encode_image(pixels: np.ndarray, output_format: str, quality: int | None = None) -> bytes:
    """HxWx3 uint8 -> PNG, JPEG or WebP bytes; `quality` (0-100) for the lossy ones, 90 by default."""
    quality = LOSSY_QUALITY if quality is None else quality
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif output_format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buffer.getvalue()
