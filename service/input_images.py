"""Input images for image-to-image: PNG, JPEG or WebP bytes -> RGB pixels at the output size, and their hash.

Decoding is blocking work: the routes run it off the event loop. Every refusal is an `InvalidField`
naming the field and the rule, so a bad image never reaches the model. An image bomb is refused from
its header, before a pixel is decoded (Pillow's `Image.open` reads only the header).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidField

INPUT_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def base64_bytes(text: str, field: str) -> bytes:
    """Standard base64, with or without a data: URL prefix and line breaks (`base64` wraps at 76)."""
    try:
        return base64.b64decode("".join(_DATA_URL.sub("", text, count=1).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidField(f"{field} must be base64 of a PNG, JPEG or WebP file ({exc})", field) from exc


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Read the header only: the format and the size, refused past `max_pixels` before decoding."""
    if not data:
        raise InvalidField(f"{field} is empty; send a PNG, JPEG or WebP file", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise InvalidField(f"{field} is not a PNG, JPEG or WebP image", field) from exc
        raise InvalidField(f"{field} has more than {max_pixels} pixels", field) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidField(f"{field} cannot be read as an image ({exc})", field) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidField(f"{field} is {width}x{height}, more than {max_pixels} pixels", field)
    return image


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the picture is shown: a phone's JPEG may be stored on its side (EXIF orientation)."""
    width, height = image.size
    orientation = image.getexif().get(0x0112) if image.format in ("JPEG", "WEBP") else None
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def load_pixels(image: Image.Image, field: str, width: int, height: int) -> np.ndarray:
    """Decode (the first frame; alpha dropped) upright, resized with Lanczos to exactly width x height if needed.

    Returns HxWx3 uint8. A truncated or corrupt file is refused here, where the pixels are read.
    """
    try:
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidField(f"{field} is truncated or corrupt ({exc})", field) from exc
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).copy()


def pixels_sha256(pixels: np.ndarray) -> str:
    """The cache key's view of an input: its decoded pixels and their shape, not the file's bytes."""
    digest = hashlib.sha256("x".join(map(str, pixels.shape)).encode() + b"\0")
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()
