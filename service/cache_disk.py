"""VerifiedBytesDisk: how an image is laid out in diskcache, and why reading one can run no code.

diskcache's own `Disk` unpickles any entry stored in MODE_PICKLE (CVE-2025-69872): whoever can
write the cache volume could run code as the service. This `Disk` stores `bytes` only and, on read,
refuses every mode but raw bytes (MODE_RAW, in the database; MODE_BINARY, in a `.val` file) and every
key that is not stored raw, before any byte is interpreted.

Each value is framed: `MAGIC | length (8 bytes, big-endian) | SHA-256 (32 bytes) | payload`. A small
value is stored framed in the database. A value in a file keeps its frame header in the database and
its payload alone in the file, so a hit can send the file as it is (sendfile) without reading it into
Python (`StoredFile`); files written before that layout hold the frame whole and are read as before.
A read checks the frame whole, so a truncated file, a flipped bit or bytes planted without the frame
are refused instead of served.

A file is hashed (SHA-256) once, then marked checked under its identity: device, inode, size, and
modification and change times in nanoseconds. Any later write, truncation or replacement changes that
identity (the change time cannot be set back without root), so the next hit hashes the file again.
Only files whose last change is older than `MARK_AFTER_S` are marked: file times advance in clock
ticks, and a write in the same tick as the check would otherwise keep the identity. What the mark does
not catch: a write that lands between the check and the send (diskcache never rewrites a file in
place, so only another writer with the service's uid can), and bits rotting on the device under an
unchanged identity. Hashing every hit (SHA-256 or xxh3) would catch the latter only by reading every
file into Python, which is what a sendfile hit avoids.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

MAGIC = b"sdxlimg1"
_HEADER = struct.Struct(">8sQ32s")
MARK_AFTER_S = 1.0  # a file's last change must be this old before it is marked checked (see above)
MAX_MARKS = 65_536  # identities of checked files kept, least recently used out first


class RefusedEntry(Exception):
    """A stored entry that will not be served. `reason`: 'not_raw_bytes' (another storage mode,
    possibly a planted pickle) or 'corrupt' (the frame, the length or the digest does not match)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload


@dataclass
class StoredFile:
    """A value file, open and checked whole: `size` bytes from its start. The reader closes it."""

    file: BinaryIO
    size: int

    def read(self) -> bytes:
        with self.file:
            self.file.seek(0)
            return self.file.read(self.size)


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


def _header(data: bytes) -> tuple[int, bytes]:
    """(length, digest) from a frame header stored in the database."""
    if len(data) != _HEADER.size:
        raise RefusedEntry("corrupt", "a damaged frame header")
    magic, length, digest = _HEADER.unpack(data)
    if magic != MAGIC:
        raise RefusedEntry("corrupt", "no frame header")
    return length, digest


class VerifiedBytesDisk(diskcache.Disk):
    """Stores `bytes` framed with their length and digest; reads back nothing else. `fetch(...,
    read=True)` answers a value in a file as a `StoredFile` instead of its bytes."""

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self._marks: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._marks_lock = threading.Lock()

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
        if len(value) + _HEADER.size < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(frame(value))
        filename, full_path = self.filename(key, value)
        try:
            self._write(full_path, io.BytesIO(value), "xb")
        except BaseException:
            # A full disk must not leave a partial .val file behind that no row points to.
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise
        header = _HEADER.pack(MAGIC, len(value), hashlib.sha256(value).digest())
        return len(value), MODE_BINARY, filename, sqlite3.Binary(header)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> bytes | StoredFile:
        if mode not in (MODE_RAW, MODE_BINARY):
            raise RefusedEntry("not_raw_bytes", f"storage mode {mode} (only raw bytes are read)")
        if mode == MODE_RAW:
            if type(value) not in (bytes, sqlite3.Binary):
                raise RefusedEntry("not_raw_bytes", f"a {type(value).__name__} in the database")
            return unframe(bytes(value))
        if filename is None:
            raise RefusedEntry("corrupt", "a file entry without a file name")
        path = os.path.join(self._directory, filename)
        if value is None:  # the older layout: the frame whole in the file
            with open(path, "rb") as reader:
                return unframe(reader.read())
        if type(value) not in (bytes, sqlite3.Binary):
            raise RefusedEntry("not_raw_bytes", f"a {type(value).__name__} in the database")
        length, digest = _header(bytes(value))
        stored = StoredFile(open(path, "rb"), length)
        try:
            data = self._check(stored, filename, digest)
        except BaseException:
            stored.file.close()
            raise
        if read:
            return stored
        if data is None:
            return stored.read()
        stored.file.close()
        return data

    def _check(self, stored: StoredFile, filename: str, digest: bytes) -> bytes | None:
        """Raises RefusedEntry unless the open file holds the value whole: hashed (its bytes are
        returned, read for that), or marked hashed under the identity it still has (None)."""
        status = os.fstat(stored.file.fileno())
        if status.st_size != stored.size:
            raise RefusedEntry("corrupt", f"{status.st_size} bytes stored, {stored.size} expected (truncated?)")
        identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
        with self._marks_lock:
            if self._marks.get(filename) == identity:
                self._marks.move_to_end(filename)
                return None
        data = stored.file.read()
        if hashlib.sha256(data).digest() != digest:
            raise RefusedEntry("corrupt", "the SHA-256 does not match")
        if time.time_ns() - max(status.st_mtime_ns, status.st_ctime_ns) > MARK_AFTER_S * 1e9:
            with self._marks_lock:
                self._marks[filename] = identity
                if len(self._marks) > MAX_MARKS:
                    self._marks.popitem(last=False)
        return data
