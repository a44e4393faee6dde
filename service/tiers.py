"""The image cache's tiers behind one interface: memory (on the event loop) -> disk -> shared (Redis).

Reads go down the tiers and fill the ones above on the way back; writes go to all. A tier that
fails costs a miss in that tier, one log line per outage (`TierHealth`) and a metric, never a request.
A hit from the shared tier is answered first: the disk tier is refilled after, in the background
(`Refills`), so a replica's first hit of an image another replica made costs a Redis read, not a disk write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import AsyncContextManager, Protocol

from service.cache import MAGIC, ImageCache
from service.cache_disk import StoredFile
from service.cache_entry import Entry, EntryFile, decode, encode, entry_in_file

logger = logging.getLogger(__name__)
MAX_REFILLS = 8  # disk refills pending at once; more are dropped (the image stays in Redis and memory)
DRAIN_S = 10.0  # how long shutdown waits for pending refills


class TierHealth:
    """Up or down, and how many errors; logs the start and the end of an outage, not each error."""

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self.up = True
        self.errors = 0

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.up:
            self.up = False
            logger.error("cache tier %s is failing (%s: %s); serving without it until it recovers", self.tier, exc.__class__.__name__, exc)

    def ok(self) -> None:
        if not self.up:
            self.up = True
            logger.info("cache tier %s works again", self.tier)


class SharedTier(Protocol):
    """A tier replicas share (service/redis_tier.py), with the leases that let them compute once."""

    health: TierHealth

    async def get(self, key: str, output_format: str) -> Entry | None: ...
    async def set(self, key: str, entry: Entry) -> None: ...
    async def try_lease(self, key: str) -> bool | None: ...
    def holding(self, key: str) -> AsyncContextManager[None]: ...
    async def wait_for(self, key: str, output_format: str) -> Entry | None: ...
    async def close(self) -> None: ...


class MemoryTier:
    """The hottest entries, least-recently-used first out, bounded in bytes. Plain dict work: no I/O,
    so it is answered on the event loop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def set(self, key: str, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return  # larger than the whole tier: it would only push everything else out
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._entries[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def fits(self, size: int) -> bool:
        return size <= self.max_bytes

    def __len__(self) -> int:
        return len(self._entries)


class Refills:
    """Writes into the disk tier that no request waits for: at most MAX_REFILLS at once (a slow or
    full disk must not pile up tasks and images in memory; one more is dropped and counted), each
    counted as written, failed or dropped, and all of them finished by `drain` at shutdown."""

    def __init__(self, disk: ImageCache) -> None:
        self.disk = disk
        self.counts = {"written": 0, "failed": 0, "dropped": 0}
        self._pending: set[asyncio.Task[None]] = set()

    def submit(self, key: str, entry: Entry) -> None:
        if len(self._pending) >= MAX_REFILLS:
            self.counts["dropped"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._write(key, entry), name="cache-refill")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, key: str, entry: Entry) -> None:
        try:
            written = await asyncio.to_thread(self.disk.set, key, encode(entry))
        except Exception:  # ImageCache.set logs its own failures; anything else is a bug, logged here
            logger.exception("refilling the disk tier with %s failed", key)
            written = False
        self.counts["written" if written else "failed"] += 1

    async def drain(self, timeout_s: float = DRAIN_S) -> None:
        """Wait for the pending refills; past `timeout_s` (a stuck disk) leave them, logged."""
        if self._pending:
            _, left = await asyncio.wait(set(self._pending), timeout=timeout_s)
            if left:
                logger.warning("%d disk-tier refills still pending after %.0f s at shutdown; left unfinished", len(left), timeout_s)


class Tiers:
    """Entries by content key through every tier this service has."""

    def __init__(self, memory: MemoryTier, disk: ImageCache, shared: SharedTier | None = None) -> None:
        self.memory = memory
        self.disk = disk
        self.shared = shared
        self.refills = Refills(disk)

    def get_memory(self, key: str) -> Entry | None:
        return self.memory.get(key)

    async def get_below_memory(self, key: str, output_format: str) -> tuple[Entry | EntryFile, str] | None:
        """(entry, tier) from the disk or the shared tier, filling the tiers above; None on a miss.
        A disk entry the memory tier would not keep comes as its open file, to be sent as it is."""
        entry = await asyncio.to_thread(self._from_disk, key, output_format)
        if entry is not None:
            if isinstance(entry, Entry):
                self.memory.set(key, entry)
            return entry, "disk"
        if self.shared is None:
            return None
        entry = await self.shared.get(key, output_format)
        if entry is None:
            return None
        self.refill_local(key, entry)
        return entry, "redis"

    def _from_disk(self, key: str, output_format: str) -> Entry | EntryFile | None:
        found = self.disk.get_file(key, output_format)
        if not isinstance(found, StoredFile):
            return _decoded(found)
        try:
            entry = entry_in_file(found.file, found.size)
        except (ValueError, OSError):
            found.file.close()
            return None
        # The memory tier needs the bytes anyway: read them here, off the event loop.
        return entry.read() if self.memory.fits(entry.image_size) else entry

    def refill_local(self, key: str, entry: Entry) -> None:
        """An entry from the shared tier into the local ones: memory now, disk in the background."""
        self.memory.set(key, entry)
        self.refills.submit(key, entry)

    async def set_local(self, key: str, entry: Entry) -> None:
        self.memory.set(key, entry)
        await asyncio.to_thread(self.disk.set, key, encode(entry))

    async def set(self, key: str, entry: Entry) -> None:
        await self.set_local(key, entry)
        if self.shared is not None:
            await self.shared.set(key, entry)

    async def close(self) -> None:
        await self.refills.drain()
        if self.shared is not None:
            await self.shared.close()
        await asyncio.to_thread(self.disk.close)


def _decoded(data: bytes | None) -> Entry | None:
    if data is None:
        return None
    try:
        return decode(data)
    except ValueError:
        return None


def is_image(data: bytes, output_format: str) -> bool:
    return data.startswith(MAGIC[output_format])
