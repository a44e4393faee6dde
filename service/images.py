"""One image for one request: the cache tiers, then a shared computation on a miss, then the tiers again.

request -> (schema) -> cache -> admission -> engine -> encoder -> cache -> response. The HTTP routes
call `CachedImages.lookup` then `answer` (or `get`, both at once). A memory hit is answered on the
event loop; everything blocking (the disk tier, the tokenizer, encoding) runs off it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass

from engines.base import ImageEngine
from service.admission import AdmissionQueue, Deadline, InFlight
from service.cache import content_key
from service.cache_entry import Entry, EntryFile
from service.imaging import encode_image
from service.metrics import ServiceMetrics
from service.schema import ImageJob
from service.tiers import Tiers


@dataclass(frozen=True)
class Hit:
    entry: Entry | EntryFile  # a file: an image on disk, sent from its open file
    tier: str  # memory, disk or redis

    def discard(self) -> None:
        """Done with it without sending it: close its file, if it has one."""
        if isinstance(self.entry, EntryFile):
            self.entry.close()


@dataclass(frozen=True)
class Lookup:
    truncated: list[str]  # prompt fields longer than the text encoders read
    cached: Hit | None


@dataclass(frozen=True)
class ImageResult:
    data: bytes | EntryFile  # a file: sent as it is by the route (sendfile)
    cache_status: str  # HIT, MISS, SHARED (joined an identical request in this process) or REMOTE (made by another replica)
    tier: str | None = None  # the tier a HIT came from


class RecentJobs:
    """Parsed requests by their raw body and Accept header, least recently used out first: a
    repeated request (a cache hit, mostly) skips decoding, validation and the content key (two
    SHA-256 of canonical JSON when the seed is derived), which cost more than the rest of a hit.
    Only what parses to the same job every time is kept: no input image, no random seed."""

    MAX_BODY_BYTES = 4096

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._jobs: OrderedDict[tuple[bytes, str | None], tuple[ImageJob, str]] = OrderedDict()

    def get(self, raw: bytes, accept: str | None) -> tuple[ImageJob, str] | None:
        found = self._jobs.get((raw, accept))
        if found is not None:
            self._jobs.move_to_end((raw, accept))
        return found

    def put(self, raw: bytes, accept: str | None, job: ImageJob, key: str) -> None:
        if len(raw) > self.MAX_BODY_BYTES:
            return
        self._jobs[(raw, accept)] = (job, key)
        if len(self._jobs) > self.size:
            self._jobs.popitem(last=False)


class CachedImages:
    """Images by content key: from the tiers, else computed once for all identical requests in flight
    (in this process through InFlight, across replicas through a lease in the shared tier)."""

    def __init__(self, engine: ImageEngine, tiers: Tiers, admission: AdmissionQueue, metrics: ServiceMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.tiers = tiers
        self.admission = admission
        self._in_flight: InFlight[tuple[Entry, str]] = InFlight()
        self.recent = RecentJobs()

    def key(self, job: ImageJob) -> str:
        info = self.engine.info
        return content_key(info.model_fingerprint, info.name, job.canonical())

    def memory_hit(self, key: str) -> Entry | None:
        """The entry in the memory tier, when it holds all a hit needs (its note): answered on the event loop."""
        entry = self.tiers.get_memory(key)
        return entry if entry is not None and entry.truncated is not None else None

    async def lookup(self, job: ImageJob, key: str) -> Lookup:
        """What every request needs before it is answered: the cached image, if any, and which
        prompts the encoders cut (stored with the image; the tokenizer runs only on a miss)."""
        hit = await self._find(key, job.output_format)
        if hit is not None and hit.entry.truncated is not None:
            return Lookup(list(hit.entry.truncated), hit)
        return Lookup(await asyncio.to_thread(self.engine.truncated_fields, job.generation), hit)

    async def _find(self, key: str, output_format: str) -> Hit | None:
        entry = self.tiers.get_memory(key)
        if entry is not None:
            return Hit(entry, "memory")
        found = await self.tiers.get_below_memory(key, output_format)
        return None if found is None else Hit(*found)

    async def stored(self, key: str, output_format: str) -> bytes | None:
        """An image made earlier, by its content key (GET /images/<key>.<format>); None when not (or no longer) cached."""
        hit = await self._find(key, output_format)
        return None if hit is None else await _image_bytes(hit.entry)

    async def get(self, job: ImageJob, key: str, deadline: float) -> ImageResult:
        """The image for `job` as bytes: from the cache, or made (or joined) now."""
        result = await self.answer(job, key, deadline, await self._find(key, job.output_format))
        if isinstance(result.data, EntryFile):
            return dataclasses.replace(result, data=await _image_bytes(result.data))
        return result

    async def answer(self, job: ImageJob, key: str, deadline: float, cached: Hit | None) -> ImageResult:
        """`cached` (a HIT) when the lookup found it, else the image made for this request (MISS),
        for an identical one already in flight here (SHARED) or on another replica (REMOTE)."""
        if cached is not None:
            self.metrics.cache_result("HIT")
            entry = cached.entry
            return ImageResult(entry.image if isinstance(entry, Entry) else entry, "HIT", cached.tier)
        (entry, status), shared = await self._in_flight.run(
            key, lambda shared_deadline: self._make_once(job, key, shared_deadline), deadline
        )
        result = ImageResult(entry.image, "SHARED" if shared else status)
        self.metrics.cache_result(result.cache_status)
        return result

    async def _make_once(self, job: ImageJob, key: str, deadline: Deadline) -> tuple[Entry, str]:
        """Made here (MISS), unless another replica holds the lease: then its image (REMOTE)."""
        shared = self.tiers.shared
        if shared is None:
            return await self._make(job, key, deadline), "MISS"
        if await shared.try_lease(key) is False:
            entry = await shared.wait_for(key, job.output_format)
            if entry is not None:
                self.tiers.refill_local(key, entry)
                return entry, "REMOTE"
        # Ours, or Redis cannot say (then every replica computes: slower, never stuck).
        async with shared.holding(key):
            return await self._make(job, key, deadline), "MISS"

    async def _make(self, job: ImageJob, key: str, deadline: Deadline) -> Entry:
        pixels = await self.admission.submit(job.generation, deadline)
        started = time.perf_counter()
        image, truncated = await asyncio.to_thread(
            lambda: (encode_image(pixels, job.output_format, job.quality), self.engine.truncated_fields(job.generation))
        )
        self.metrics.stage("image_encoding", time.perf_counter() - started)
        entry = Entry(image, tuple(truncated))
        await self.tiers.set(key, entry)  # only a finished image is ever stored
        return entry


async def _image_bytes(entry: Entry | EntryFile) -> bytes:
    return entry.image if isinstance(entry, Entry) else (await asyncio.to_thread(entry.read)).image
