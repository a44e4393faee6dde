"""Entry: an image and what a hit needs for its headers, as the one byte string every tier stores.

Layout: `image | note (JSON list of the truncated prompt fields) | note length (4 bytes, big-endian) | b"sdxlnote"`.
A trailer, not a header: the stored value still starts with the image's own magic bytes, which the
disk tier checks, and an entry written before notes were kept (no trailer) still reads as an image
whose note is unknown (`truncated is None`: the tokenizer runs once for it). The seed needs no
note: it is part of the request, hence of the key.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Mapping

_TRAILER = struct.Struct(">I8s")
_NOTE_MAGIC = b"sdxlnote"


@dataclass(slots=True)
class Entry:
    image: bytes
    truncated: tuple[str, ...] | None  # prompt fields the text encoders cut; None: not known
    # A memory hit's response headers, made at its first hit and kept with the image (not stored).
    hit_headers: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        return len(self.image) + 64 * len(self.truncated or ())


def encode(entry: Entry) -> bytes:
    note = json.dumps(list(entry.truncated or ())).encode()
    return entry.image + note + _TRAILER.pack(len(note), _NOTE_MAGIC)


@dataclass
class EntryFile:
    """An entry in an open cache file: the image is the file's first `image_size` bytes, to be sent
    as they are. Whoever takes it closes the file (sending it, or reading it)."""

    file: BinaryIO
    image_size: int
    truncated: tuple[str, ...] | None

    def read(self) -> Entry:
        with self.file:
            self.file.seek(0)
            return Entry(self.file.read(self.image_size), self.truncated)

    def close(self) -> None:
        self.file.close()


def decode(data: bytes) -> Entry:
    """The entry in `data`; an image without a trailer comes back with an unknown note."""
    image_size, note = _split(len(data), lambda offset, count: data[offset : offset + count])
    return Entry(data[:image_size], note)


def entry_in_file(file: BinaryIO, size: int) -> EntryFile:
    """The entry whose encoding is the first `size` bytes of `file`, reading only its note."""
    image_size, note = _split(size, lambda offset, count: os.pread(file.fileno(), count, offset))
    return EntryFile(file, image_size, note)


def _split(size: int, read_at: Callable[[int, int], bytes]) -> tuple[int, tuple[str, ...] | None]:
    """(image length, note) of an encoded entry of `size` bytes, read through read_at(offset, count)."""
    if size < _TRAILER.size:
        return size, None
    length, magic = _TRAILER.unpack(read_at(size - _TRAILER.size, _TRAILER.size))
    if magic != _NOTE_MAGIC:
        return size, None
    end = size - _TRAILER.size
    try:
        note = json.loads(read_at(end - length, length)) if length <= end else None
    except ValueError:
        note = None
    if not isinstance(note, list) or not all(isinstance(field, str) for field in note):
        raise ValueError("the entry's note is damaged")
    return end - length, tuple(note)
