"""Entry: an image and what a hit needs for its headers, as the one byte string every tier stores.

Layout: `image | note (JSON list of the truncated prompt fields) | note length (4 bytes, big-endian) | b"sdxlnote"`.
A trailer, not a header: the stored value still starts with the image's own magic bytes, which the
disk tier checks, and an entry written before notes were kept (no trailer) still reads as an image
whose note is unknown (`truncated is None`: the tokenizer runs once for it). The seed needs no
note: it is part of the request, hence of the key.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Mapping

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


def decode(data: bytes) -> Entry:
    """The entry in `data`; an image without a trailer comes back with an unknown note."""
    if len(data) < _TRAILER.size or data[-8:] != _NOTE_MAGIC:
        return Entry(data, None)
    length, _ = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    end = len(data) - _TRAILER.size
    try:
        note = json.loads(data[end - length : end])
    except ValueError:
        note = None
    if length > end or not isinstance(note, list) or not all(isinstance(field, str) for field in note):
        raise ValueError("the entry's note is damaged")
    return Entry(data[: end - length], tuple(note))
