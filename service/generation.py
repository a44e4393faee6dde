"""One image for one request: cache lookup, then a shared computation on a miss, then the cache again.

request -> (schema) -> cache -> scheduler -> engine -> encoder -> cache -> response. The HTTP routes
call `ImageGenerator.get`; everything blocking runs off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, TypeVar

from engines.base import ImageEngine
from service.cache import ImageCache, content_key
from service.imaging import encode_image
from service.scheduler import InferenceScheduler, InFlight
from service.schema import ImageJob

T = TypeVar("T")


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """Disk, tokenizers and image encoding: the loop's default thread pool, never the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@dataclass(frozen=True)
class ImageResult:
    data: bytes
    cache_status: str  # HIT, MISS or SHARED (joined an identical request being computed)


class ImageGenerator:
    def __init__(self, engine: ImageEngine, cache: ImageCache, scheduler: InferenceScheduler) -> None:
        self.engine = engine
        self.cache = cache
        self.scheduler = scheduler
        self._in_flight: InFlight[bytes] = InFlight()

    def key(self, job: ImageJob) -> str:
        info = self.engine.info
        return content_key(info.model_fingerprint, info.name, job.canonical())

    async def truncated_fields(self, job: ImageJob) -> list[str]:
        return await run_blocking(self.engine.truncated_fields, job.generation)

    async def get(self, job: ImageJob, key: str, deadline: float) -> ImageResult:
        cached = await run_blocking(self.cache.get, key, job.output_format)
        if cached is not None:
            return ImageResult(cached, "HIT")
        data, shared = await self._in_flight.run(key, lambda: self._make(job, key, deadline))
        return ImageResult(data, "SHARED" if shared else "MISS")

    async def _make(self, job: ImageJob, key: str, deadline: float) -> bytes:
        pixels = await self.scheduler.submit(job.generation, deadline)
        data = await run_blocking(encode_image, pixels, job.output_format)
        await run_blocking(self.cache.set, key, data)  # only a finished image is ever stored
        return data
