"""What the app and its handlers share: the typed app keys, the readiness state, and drain.

Its own module so that app.py (which builds the application) and routes.py (which reads it) both
import from here and never from each other.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from engines.base import ImageEngine
from service.admission import AdmissionQueue
from service.cache import ImageCache
from service.images import CachedImages
from service.metrics import ServiceMetrics
from service.schema import RequestLimits
from service.settings import Settings


@dataclass
class Readiness:
    """Where the service stands: loading -> warming_up -> ready -> draining; or failed."""

    state: str = "loading"
    detail: str = ""
    # Set when the process should stop: the engine could not load, or a signal came.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # HTTP requests being served (from their headers to their answer), counted by the outermost middleware.
    requests: int = 0
    # Set when the shutdown timeout has passed: bodies still arriving are answered 503 without reading the rest.
    stop_reading: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.state == "ready"


SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", ImageEngine)
CACHE = web.AppKey("cache", ImageCache)
ADMISSION = web.AppKey("admission", AdmissionQueue)
IMAGES = web.AppKey("images", CachedImages)
READINESS = web.AppKey("readiness", Readiness)
LIMITS = web.AppKey("limits", RequestLimits)
METRICS = web.AppKey("metrics", ServiceMetrics)


async def drain(app: web.Application) -> bool:
    """Refuse new requests; let those already in (their headers arrived) finish within the shutdown
    timeout, a body still arriving included; True if all of them did. Past the timeout, a request
    still reading its body is answered 503 before the rest is read, and queued work 503 too."""
    readiness = app[READINESS]
    if readiness.state != "failed":
        readiness.state, readiness.detail = "draining", "shutting down"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + app[SETTINGS].shutdown_timeout
    while readiness.requests and loop.time() < deadline:
        await asyncio.sleep(0.05)
    readiness.stop_reading.set()
    return await app[ADMISSION].drain(max(0.0, deadline - loop.time())) and not readiness.requests
