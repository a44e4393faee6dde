"""ImageCache: content key -> encoded image bytes, on local disk (diskcache).

What it promises:
- Values are the encoded image bytes, stored raw (diskcache keeps `bytes` as a BLOB or a file,
  never pickled), so anything that reads the directory reads images.
- Writes are atomic (SQLite transactions); the size limit is kept by evicting the least recently
  used entries, lazily, as diskcache culls on writes.
- A failing cache (disk full, locked, corrupt entry) costs a miss and a log line, never a failed
  request. Every method blocks: the service calls them off the event loop.
- The directory is private to the service's user (mode 0700).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import diskcache

from service.schema import canonical_json

logger = logging.getLogger(__name__)

# Leading bytes of each format we store: an entry that does not start with them is corrupt.
MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",), "webp": (b"RIFF",)}


def content_key(model_fingerprint: str, numerics: str, canonical_request: dict[str, Any]) -> str:
    """SHA-256 of everything that decides the bytes: model, backend numerics, request (seed and format included)."""
    payload = {"model": model_fingerprint, "numerics": numerics, "request": canonical_request}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class ImageCache:
    def __init__(self, directory: Path, size_limit_bytes: int) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._cache = diskcache.Cache(
            str(directory), size_limit=size_limit_bytes, eviction_policy="least-recently-used"
        )

    def get(self, key: str, output_format: str) -> bytes | None:
        try:
            value = self._cache.get(key)
        except Exception:
            logger.exception("image cache read failed for %s; treating it as a miss", key)
            return None
        if value is None:
            return None
        if not isinstance(value, bytes) or not value.startswith(MAGIC[output_format]):
            logger.error("image cache entry %s is corrupt; dropping it", key)
            self.delete(key)
            return None
        return value

    def set(self, key: str, value: bytes) -> None:
        try:
            self._cache.set(key, value)
        except Exception:
            logger.exception("image cache write failed for %s; the image is served uncached", key)

    def delete(self, key: str) -> None:
        try:
            self._cache.delete(key)
        except Exception:
            logger.exception("image cache delete failed for %s", key)

    def close(self) -> None:
        self._cache.close()
