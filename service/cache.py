"""ImageCache: content key -> encoded image bytes, on local disk (diskcache).

What it promises:
- Reading the cache runs no code. Values go through `VerifiedBytesDisk` (service/cache_disk.py):
  raw bytes only, framed with their length and SHA-256; any other storage mode (a planted pickle)
  is refused before a byte of it is interpreted, the entry dropped, a log line and a metric
  (`sdxl_cache_faults_total{kind="refused_not_raw_bytes"}`) say so.
- Nothing truncated or altered is served: an entry whose length or digest does not match is a miss,
  dropped and counted (`kind="corrupt_entry"`). A write that fails half-way (disk full) removes its
  partial file; `.val` files that no entry points to (a kill -9 mid-write) are removed at start-up
  once they are older than `ORPHAN_AGE_S` (younger ones may belong to another process writing now).
- Eviction is least-recently-stored: the oldest entries go first when the size limit is reached,
  lazily, as diskcache culls on writes. Least-recently-used would write an access time on every
  read, so every hit would be a write transaction (slower, and on a full disk even hits would fail);
  a hot image that is evicted costs one recomputation.
- The cache never stops the service. At start-up a corrupt database is set aside (renamed to
  `cache.db.corrupt-<time>`, never deleted) and a fresh one made; a directory that cannot be
  created, read or written is bypassed: the service serves uncached. Either way one log line and a
  metric (`kind="set_aside"` / `kind="bypassed"`, `sdxl_cache_enabled 0`). At run time a failing
  read or write costs a miss, logged once per outage.
- Only a directory the service creates is made private (mode 0700); an existing one keeps its mode.
- Every method blocks: the service calls them off the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import diskcache

from service.cache_disk import RefusedEntry, StoredFile, VerifiedBytesDisk
from service.schema import canonical_json

logger = logging.getLogger(__name__)

# Leading bytes of each format we store: an entry that does not start with them is corrupt.
MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",), "webp": (b"RIFF",)}
DATABASE = "cache.db"
ORPHAN_AGE_S = 600.0


def content_key(model_fingerprint: str, numerics: str, canonical_request: dict[str, Any]) -> str:
    """SHA-256 of everything that decides the bytes: model, backend numerics, request (seed and format included)."""
    payload = {"model": model_fingerprint, "numerics": numerics, "request": canonical_request}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class CacheFaults:
    """Counts of what went wrong, by kind; read by the metrics at scrape time (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self._counts[kind] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class ImageCache:
    def __init__(self, directory: Path, size_limit_bytes: int, orphan_age_s: float = ORPHAN_AGE_S) -> None:
        self.directory = directory
        self.faults = CacheFaults()
        self._failing: set[str] = set()  # operations failing now: logged once per outage
        self._cache = self._open(directory, size_limit_bytes)
        if self._cache is not None:
            self._remove_orphans(orphan_age_s)

    @property
    def enabled(self) -> bool:
        return self._cache is not None

    # --- start-up: whatever state the directory is in ------------------------------------------------

    def _open(self, directory: Path, size_limit_bytes: int) -> diskcache.Cache | None:
        try:
            _make_private_directory(directory)
        except OSError as exc:
            return self._bypass(f"the directory cannot be created: {exc}")
        try:
            return _open_checked(directory, size_limit_bytes)
        except sqlite3.OperationalError as exc:  # read-only, unreadable, locked: not ours to move
            return self._bypass(f"{exc.__class__.__name__}: {exc}")
        except sqlite3.DatabaseError as exc:  # not a database, malformed: set it aside, start afresh
            try:
                aside = _set_aside(directory / DATABASE)
                cache = _open_checked(directory, size_limit_bytes)
            except (OSError, sqlite3.Error) as again:
                return self._bypass(f"corrupt ({exc}), and it could not be set aside: {again}")
            self.faults.add("set_aside")
            logger.error("image cache database %s is corrupt (%s); set aside as %s, starting empty", directory / DATABASE, exc, aside.name)
            return cache
        except OSError as exc:
            return self._bypass(f"{exc.__class__.__name__}: {exc}")

    def _bypass(self, why: str) -> None:
        self.faults.add("bypassed")
        logger.error("image cache at %s is unusable (%s); serving without a cache", self.directory, why)
        return None

    def _remove_orphans(self, min_age_s: float) -> None:
        """Remove .val files no entry points to, once old enough not to be another process's write in progress."""
        assert self._cache is not None
        try:
            known = {row[0] for row in self._cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
            now, removed = time.time(), 0
            for path in self.directory.rglob("*.val"):
                relative = str(path.relative_to(self.directory))
                if relative not in known and now - path.stat().st_mtime > min_age_s:
                    path.unlink()
                    removed += 1
        except (OSError, sqlite3.Error) as exc:
            logger.warning("image cache: looking for orphaned files failed: %s", exc)
            return
        if removed:
            self.faults.add("orphans_removed", removed)
            logger.info("image cache: removed %d orphaned value files", removed)

    # --- serving ---------------------------------------------------------------------------------------

    def get(self, key: str, output_format: str) -> bytes | None:
        found = self._fetch(key, output_format, read=False)
        assert not isinstance(found, StoredFile)
        return found

    def get_file(self, key: str, output_format: str) -> StoredFile | bytes | None:
        """A value in a file as the open, checked file (to be sent as it is; the caller closes it);
        a small one, in the database, as its bytes."""
        return self._fetch(key, output_format, read=True)

    def _fetch(self, key: str, output_format: str, read: bool) -> StoredFile | bytes | None:
        if self._cache is None:
            return None
        try:
            value = self._cache.get(key, read=read)
        except RefusedEntry as exc:
            self.faults.add("refused_not_raw_bytes" if exc.reason == "not_raw_bytes" else "corrupt_entry")
            logger.error("image cache entry %s refused (%s); dropping it", key, exc)
            self.delete(key)
            return None
        except Exception:
            self._failed("read", f"image cache read failed for {key}; treating it as a miss")
            return None
        self._recovered("read")
        if value is None:
            return None
        magic = MAGIC[output_format]
        if isinstance(value, StoredFile):
            leading = os.pread(value.file.fileno(), 16, 0)
        else:
            leading = value
        if not leading.startswith(magic):
            if isinstance(value, StoredFile):
                value.file.close()
            self.faults.add("corrupt_entry")
            logger.error("image cache entry %s is not a %s image; dropping it", key, output_format)
            self.delete(key)
            return None
        return value

    def set(self, key: str, value: bytes) -> bool:
        """Store `value`; False when it was not (no cache, or a failed write: logged once per outage)."""
        if self._cache is None:
            return False
        try:
            self._cache.set(key, value)
        except Exception:
            self._failed("write", f"image cache write failed for {key}; the image is served uncached")
            return False
        self._recovered("write")
        return True

    def delete(self, key: str) -> None:
        if self._cache is None:
            return
        try:
            self._cache.delete(key)
        except Exception:
            logger.exception("image cache delete failed for %s", key)

    @property
    def working(self) -> bool:
        """False while reads or writes are failing (an outage, logged once)."""
        return not self._failing

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def _failed(self, operation: str, message: str) -> None:
        self.faults.add(f"{operation}_error")
        if operation not in self._failing:
            self._failing.add(operation)
            logger.exception(message + " (further failures are counted, not logged, until it recovers)")

    def _recovered(self, operation: str) -> None:
        if operation in self._failing:
            self._failing.discard(operation)
            logger.info("image cache %s works again", operation)


def _make_private_directory(directory: Path) -> None:
    """Create the directory private (0700) if it is missing; an existing directory keeps its mode
    (it may be a volume, or a mistaken --cache-dir $HOME)."""
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask


def _open_checked(directory: Path, size_limit_bytes: int) -> diskcache.Cache:
    cache = diskcache.Cache(
        str(directory), size_limit=size_limit_bytes, eviction_policy="least-recently-stored", disk=VerifiedBytesDisk
    )
    try:
        # diskcache opens a damaged file without complaint; a quick check finds it now, not at the first request.
        result = cache._sql("PRAGMA quick_check").fetchall()
        if result != [("ok",)]:
            raise sqlite3.DatabaseError(f"quick_check: {result[:3]}")
        cache._sql("SELECT COUNT(*) FROM Cache").fetchall()
    except BaseException:
        cache.close()
        raise
    return cache


def _set_aside(database: Path) -> Path:
    """Rename the database (and its WAL files) out of the way; returns the new name of the database."""
    suffix = time.strftime(".corrupt-%Y%m%dT%H%M%S", time.gmtime())
    aside = database.with_name(database.name + suffix)
    for name in (database.name, database.name + "-wal", database.name + "-shm"):
        source = database.with_name(name)
        if source.exists():
            source.rename(source.with_name(name + suffix))
    return aside
