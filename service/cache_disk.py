"""VerifiedBytesDisk: how an image is laid out in diskcache, and why reading one can run no code.

diskcache's own `Disk` unpickles any entry stored in MODE_PICKLE (CVE-2025-69872): whoever can
write the cache volume could run code as the service. This `Disk` stores `bytes` only and, on read,
refuses every mode but raw bytes (MODE_RAW, in the database; MODE_BINARY, in a `.val` file) and every
key that is not stored raw, before any byte is interpreted.

Each value is framed: `MAGIC | length (8 bytes, big-endian) | SHA-256 (32 bytes) | payload`. A read
checks the frame whole, so a truncated file, a flipped bit or bytes planted without the frame are
refused instead of served.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import struct
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

MAGIC = b"sdxlimg1"
_HEADER = struct.Struct(">8sQ32s")


class RefusedEntry(Exception):
    """A stored entry that will not be served. `reason`: 'not_raw_bytes' (another storage mode,
    possibly a planted pickle) or 'corrupt' (the frame, the length or the digest does not match)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload


def unframe(data: bytes) -> bytes:
    """The payload of a framed value; raises RefusedEntry('corrupt') unless it is whole."""
    if len(data) < _HEADER.size:
        raise RefusedEntry("corrupt", f"{len(data)} bytes, shorter than the frame header")
    magic, length, digest = _HEADER.unpack_from(data)
    payload = memoryview(data)[_HEADER.size :]
    if magic != MAGIC:
        raise RefusedEntry("corrupt", "no frame header")
    if len(payload) != length:
        raise RefusedEntry("corrupt", f"{len(payload)} bytes stored, {length} expected (truncated?)")
    if hashlib.sha256(payload).digest() != digest:
        raise RefusedEntry("corrupt", "the SHA-256 does not match")
    return bytes(payload)


class VerifiedBytesDisk(diskcache.Disk):
    """Stores `bytes` framed with their length and digest; reads back nothing else."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"image cache keys are str, got {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        # Keys come back from the database when the cache is iterated or culled.
        if not raw:
            raise RefusedEntry("not_raw_bytes", "a key that is not stored raw")
        return bytes(key) if type(key) is sqlite3.Binary else key

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if read or type(value) is not bytes:
            raise TypeError(f"the image cache stores bytes only, got {type(value).__name__}")
        framed = frame(value)
        if len(framed) < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(framed)
        filename, full_path = self.filename(key, value)
        try:
            self._write(full_path, io.BytesIO(framed), "xb")
        except BaseException:
            # A full disk must not leave a partial .val file behind that no row points to.
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise
        return len(framed), MODE_BINARY, filename, None

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> bytes:
        if read or mode not in (MODE_RAW, MODE_BINARY):
            raise RefusedEntry("not_raw_bytes", f"storage mode {mode} (only raw bytes are read)")
        if mode == MODE_RAW:
            if type(value) not in (bytes, sqlite3.Binary):
                raise RefusedEntry("not_raw_bytes", f"a {type(value).__name__} in the database")
            return unframe(bytes(value))
        if filename is None:
            raise RefusedEntry("corrupt", "a file entry without a file name")
        with open(os.path.join(self._directory, filename), "rb") as reader:
            return unframe(reader.read())
