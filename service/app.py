"""create_app(settings, engine, cache) -> aiohttp Application: middlewares, routes, life cycle.

The application takes ownership of the engine and the cache it is given: its cleanup context
starts the admission queue, loads and warms up the engine in the background (so /healthz answers while a
large model loads), and on shutdown drains, then closes the admission queue, the engine and the cache.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from engines.base import ImageEngine
from service.admission import AdmissionQueue
from service.cache import ImageCache
from service.errors import REQUEST_ID_HEADER, REQUEST_ID_KEY, error_middleware
from service.images import CachedImages
from service.logs import current_request_id
from service.metrics import ServiceMetrics, metrics_middleware
from service.routes import add_routes
from service.schema import RequestLimits
from service.settings import Settings
from service.state import ADMISSION, CACHE, ENGINE, IMAGES, LIMITS, METRICS, READINESS, SETTINGS, Readiness

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every request gets an id (the client's, if it sent a sane one), echoed in a header and in logs."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request[REQUEST_ID_KEY] = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    current_request_id.set(request[REQUEST_ID_KEY])
    response = await handler(request)
    response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID_KEY]
    return response


async def _load_and_warm_up(app: web.Application) -> None:
    engine, admission, readiness = app[ENGINE], app[ADMISSION], app[READINESS]
    try:
        await admission.call_engine(engine.load)
        readiness.state, readiness.detail = "warming_up", "making one warm-up image"
        await admission.call_engine(engine.warm_up)
    except Exception as exc:
        logger.exception("the engine %s could not start", engine.info.name)
        readiness.state, readiness.detail = "failed", f"{exc.__class__.__name__}: {exc}"
        readiness.stop.set()
        return
    readiness.state, readiness.detail = "ready", ""
    logger.info("ready: engine %s, model %s", engine.info.name, engine.info.model_fingerprint)


async def _engine_context(app: web.Application) -> AsyncIterator[None]:
    admission, engine = app[ADMISSION], app[ENGINE]
    admission.start()
    loader = asyncio.create_task(_load_and_warm_up(app), name="engine-loader")
    yield
    loader.cancel()
    await asyncio.gather(loader, return_exceptions=True)
    await admission.close()
    await asyncio.to_thread(engine.close)


async def _cache_context(app: web.Application) -> AsyncIterator[None]:
    yield
    await asyncio.to_thread(app[CACHE].close)


def create_app(settings: Settings, engine: ImageEngine, cache: ImageCache) -> web.Application:
    metrics = ServiceMetrics()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Outermost first: the metrics see the status the error middleware settled on.
        middlewares=[request_id_middleware, metrics_middleware(metrics), error_middleware(settings.max_body_bytes)],
    )
    app[METRICS] = metrics
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[CACHE] = cache
    app[READINESS] = Readiness()
    app[LIMITS] = RequestLimits(
        max_prompt_chars=settings.max_prompt_chars, max_steps=settings.max_steps, engine=engine.limits,
        max_input_pixels=settings.max_input_pixels,
    )
    app[ADMISSION] = AdmissionQueue(
        engine,
        max_queue=settings.max_queue,
        max_batch=settings.max_batch,
        batch_window_s=settings.batch_window_ms / 1000,
        observer=metrics,
    )
    app[IMAGES] = CachedImages(engine, cache, app[ADMISSION], metrics)
    # Cleanup runs in reverse: the engine stops before the cache closes.
    app.cleanup_ctx.append(_cache_context)
    app.cleanup_ctx.append(_engine_context)
    add_routes(app)
    return app
