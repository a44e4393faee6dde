"""CORS for browsers on other origins (--cors-origins; off by default): preflights answered, the
image headers exposed so a page can read the seed, the cache status and the engine."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

EXPOSED = ("X-Seed, X-Num-Inference-Steps, X-Cache, X-Cache-Tier, ETag, Content-Location, X-Engine, X-Request-Id, "
           "X-Prompt-Truncated, Retry-After")
ALLOWED_HEADERS = "Content-Type, Authorization, X-API-Key, X-Request-Timeout, X-Request-Id, If-None-Match, Accept"
ALLOWED_METHODS = "GET, POST, OPTIONS"
PREFLIGHT_MAX_AGE = "600"


def cors_middleware(origins: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """`origins`: comma-separated origins, or *."""
    allowed = frozenset(o.strip() for o in origins.split(",") if o.strip())
    any_origin = "*" in allowed

    def headers_for(origin: str) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": "*" if any_origin else origin, "Vary": "Origin"}

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not (any_origin or origin in allowed):
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            # A preflight: answered here, before routing (a POST-only route would say 405) and before API keys.
            return web.Response(status=204, headers={
                **headers_for(origin),
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            })
        response = await handler(request)
        response.headers.update({**headers_for(origin), "Access-Control-Expose-Headers": EXPOSED})
        return response

    return middleware
