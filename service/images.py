"""One image for one request: cache lookup, then a shared computation on a miss, then the cache again.

request -> (schema) -> cache -> admission -> engine -> encoder -> cache -> response. The HTTP routes
call `CachedImages.lookup` then `answer` (or `get`, both at once); everything blocking runs off the
event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from engines.base import ImageEngine
from service.admission import AdmissionQueue, Deadline, InFlight
from service.cache import ImageCache, content_key
from service.imaging import encode_image
from service.metrics import ServiceMetrics
from service.schema import ImageJob

@dataclass(frozen=True)
class Lookup:
    truncated: list[str]  # prompt fields longer than the text encoders read
    cached: bytes | None


@dataclass(frozen=True)
class ImageResult:
    data: bytes
    cache_status: str  # HIT, MISS or SHARED (joined an identical request being computed)


class CachedImages:
    """Images by content key: from the cache, else computed once for all identical requests in flight."""

    def __init__(
        self, engine: ImageEngine, cache: ImageCache, admission: AdmissionQueue, metrics: ServiceMetrics
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.cache = cache
        self.admission = admission
        self._in_flight: InFlight[bytes] = InFlight()

    def key(self, job: ImageJob) -> str:
        info = self.engine.info
        return content_key(info.model_fingerprint, info.name, job.canonical())

    async def lookup(self, job: ImageJob, key: str) -> Lookup:
        """What every request needs before it is answered, in one trip off the event loop: which
        prompts the encoders will cut, and the cached image, if any."""
        return await asyncio.to_thread(self._lookup, job, key)

    def _lookup(self, job: ImageJob, key: str) -> Lookup:
        return Lookup(self.engine.truncated_fields(job.generation), self.cache.get(key, job.output_format))

    async def stored(self, key: str, output_format: str) -> bytes | None:
        """An image made earlier, by its content key (GET /images/<key>.<format>); None when not (or no longer) cached."""
        return await asyncio.to_thread(self.cache.get, key, output_format)

    async def get(self, job: ImageJob, key: str, deadline: float) -> ImageResult:
        """The image for `job`: from the cache, or made (or joined) now."""
        return await self.answer(job, key, deadline, await asyncio.to_thread(self.cache.get, key, job.output_format))

    async def answer(self, job: ImageJob, key: str, deadline: float, cached: bytes | None) -> ImageResult:
        """`cached` (a HIT) when the lookup found it, else the image made for this request (MISS) or
        for an identical one already in flight (SHARED)."""
        if cached is not None:
            self.metrics.cache_result("HIT")
            return ImageResult(cached, "HIT")
        data, shared = await self._in_flight.run(key, lambda shared_deadline: self._make(job, key, shared_deadline), deadline)
        result = ImageResult(data, "SHARED" if shared else "MISS")
        self.metrics.cache_result(result.cache_status)
        return result

    async def _make(self, job: ImageJob, key: str, deadline: Deadline) -> bytes:
        pixels = await self.admission.submit(job.generation, deadline)
        started = time.perf_counter()
        data = await asyncio.to_thread(encode_image, pixels, job.output_format, job.quality)
        self.metrics.stage("image_encoding", time.perf_counter() - started)
        await asyncio.to_thread(self.cache.set, key, data)  # only a finished image is ever stored
        return data
