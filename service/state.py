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
    """Refuse new work, let in-flight work finish within the grace period; True if all of it did."""
    readiness = app[READINESS]
    if readiness.state != "failed":
        readiness.state, readiness.detail = "draining", "shutting down"
    return await app[ADMISSION].drain(app[SETTINGS].shutdown_timeout)
