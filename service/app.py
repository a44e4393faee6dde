"""create_app(settings, engine, cache) -> aiohttp Application: middlewares, routes, life cycle.

The application takes ownership of the engine and the cache it is given: its cleanup context
starts the admission queue, loads and warms up the engine in the background (so /healthz answers while a
large model loads), and on shutdown drains, then closes the admission queue, the engine and the cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from engines.base import EngineUnavailable, ImageEngine, SelfTestFailed
from service.admission import AdmissionQueue
from service.auth import ApiKeys, auth_middleware
from service.cors import cors_middleware
from service.cache import ImageCache
from service.errors import REQUEST_ID_HEADER, REQUEST_ID_KEY, error_answer, error_middleware
from service.images import CachedImages
from service.logs import current_request_id
from service.metrics import CLIENT_CLOSED, ServiceMetrics
from service.redis_tier import RedisTier
from service.routes import add_routes
from service.schema import RequestLimits
from service.settings import Settings
from service.state import ADMISSION, CACHE, ENGINE, IMAGES, LIMITS, METRICS, READINESS, SETTINGS, Readiness
from service.tiers import MemoryTier, Tiers

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def serving_middleware(metrics: ServiceMetrics, readiness: Readiness, max_body_bytes: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The outermost middleware, in one pass (one coroutine frame per request, not three): every
    request gets an id (the client's, if it sent a sane one), echoed in a header and in logs; an
    error becomes its JSON answer; each request is counted by route, status and outcome, and
    while it is served (the shutdown drain waits for it)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER)
        request_id = incoming if incoming is not None and _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
        request[REQUEST_ID_KEY] = request_id
        current_request_id.set(request_id)
        status, cache_status = 500, None
        readiness.requests += 1
        try:
            try:
                response = await handler(request)
            except asyncio.CancelledError:
                status = CLIENT_CLOSED  # the client went away: its own outcome, not a 500
                raise
            except Exception as exc:
                response = error_answer(request, exc, max_body_bytes)
            headers = response.headers
            status, cache_status = response.status, headers.get("X-Cache")
            headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException as exc:  # below 400 (a redirect), passed on by error_answer
            status = exc.status
            raise
        finally:
            readiness.requests -= 1
            metrics.request_done(request, status, cache_status, time.perf_counter() - started)

    return middleware


async def _load_and_warm_up(app: web.Application) -> None:
    engine, admission, readiness = app[ENGINE], app[ADMISSION], app[READINESS]
    try:
        started = time.perf_counter()
        logger.info("loading the model into %s", engine.info.name)
        await admission.call_engine(engine.load)
        logger.info("loaded, %.1f s; warming up: one image, checked against the build's (self-test)", time.perf_counter() - started)
        readiness.state, readiness.detail = "warming_up", "making one warm-up image"
        started = time.perf_counter()
        await admission.call_engine(engine.warm_up)
        logger.info("warm-up image made and checked, %.1f s", time.perf_counter() - started)
    except SelfTestFailed as exc:
        # Kept running, not ready: /readyz says why, the metric alerts, and nobody gets broken images.
        logger.error("self-test failed, not ready: %s", exc)
        readiness.state, readiness.detail = "self_test_failed", str(exc)
        app[METRICS].self_test.set(0)
        return
    except EngineUnavailable as exc:  # a refusal with its reason: one line, no traceback
        logger.error("the engine %s could not start: %s", engine.info.name, exc)
        readiness.state, readiness.detail = "failed", str(exc)
        readiness.stop.set()
        return
    except Exception as exc:
        logger.exception("the engine %s could not start", engine.info.name)
        readiness.state, readiness.detail = "failed", f"{exc.__class__.__name__}: {exc}"
        readiness.stop.set()
        return
    readiness.state, readiness.detail = "ready", ""
    app[METRICS].self_test.set(1)
    app[METRICS].engine_ready(engine.info.name, engine.info.model_fingerprint)
    settings = app[SETTINGS]
    logger.info(
        "ready on http://%s:%s: engine %s, model %s", settings.host, settings.port, engine.info.name, engine.info.model_fingerprint
    )


async def _engine_context(app: web.Application) -> AsyncIterator[None]:
    admission, engine = app[ADMISSION], app[ENGINE]
    admission.start()
    loader = asyncio.create_task(_load_and_warm_up(app), name="engine-loader")
    yield
    loader.cancel()
    await asyncio.gather(loader, return_exceptions=True)
    await admission.close()
    if admission.engine_idle:
        await asyncio.to_thread(engine.close)
    else:  # closing it under a running call is not safe; the process is exiting anyway
        logger.warning("the engine is still busy after the shutdown timeout; exiting without closing it")


async def _cache_context(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[IMAGES].tiers.close()


def create_app(settings: Settings, engine: ImageEngine, cache: ImageCache, api_keys: ApiKeys | None = None) -> web.Application:
    """`api_keys`: the keys read from --api-keys-file; None leaves the service open."""
    metrics = ServiceMetrics()
    # Outermost first: the metrics see the status of the JSON answer an error became (a refused key's 401).
    readiness = Readiness()
    middlewares = [serving_middleware(metrics, readiness, settings.max_body_bytes)]
    if settings.cors_origins:
        # Outside errors and keys: their answers carry CORS too.
        middlewares += [cors_middleware(settings.cors_origins), error_middleware(settings.max_body_bytes)]
    if api_keys is not None:
        middlewares.append(auth_middleware(api_keys, settings.metrics_require_key))
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    metrics.watch_cache(cache)
    app[METRICS] = metrics
    metrics.ready.set_function(lambda: float(app[READINESS].ready))
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[CACHE] = cache
    app[READINESS] = readiness
    app[LIMITS] = RequestLimits(
        max_prompt_chars=settings.max_prompt_chars, max_steps=settings.max_steps, engine=engine.limits,
        max_input_pixels=settings.max_input_pixels, max_images=settings.max_images,
    )
    app[ADMISSION] = AdmissionQueue(
        engine,
        max_queue=settings.max_queue,
        max_batch=settings.max_batch,
        batch_window_s=settings.batch_window_ms / 1000,
        observer=metrics,
        max_queue_share=settings.max_queue_share if api_keys is not None else 1.0,
    )
    shared = None if settings.cache_url is None else RedisTier(settings.cache_url, settings.cache_ttl)
    tiers = Tiers(MemoryTier(settings.memory_cache_size), cache, shared)
    metrics.watch_tiers(tiers)
    app[IMAGES] = CachedImages(engine, tiers, app[ADMISSION], metrics)
    # Cleanup runs in reverse: the engine stops before the cache closes.
    app.cleanup_ctx.append(_cache_context)
    app.cleanup_ctx.append(_engine_context)
    add_routes(app)
    return app
