"""HTTP handlers. They parse, ask CachedImages, and shape the answer; nothing here blocks."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from pathlib import Path
from typing import Awaitable, TypeVar

from aiohttp import web

from service.errors import BodyTimeout, DeadlineExceeded, InvalidField, NotReady, UnsupportedMediaType
from service.openapi import openapi_spec
from service.schema import ImageJob, decode_json_body, parse_generation_request, parse_openai_request
from service.state import ADMISSION, ENGINE, IMAGES, LIMITS, METRICS, READINESS, SETTINGS

STATIC = Path(__file__).with_name("static")
INDEX_PAGE = (STATIC / "index.html").read_text()
FAVICON = (STATIC / "favicon.svg").read_bytes()
TIMEOUT_HEADER = "X-Request-Timeout"
T = TypeVar("T")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/generate-image", generate_image)
    app.router.add_post("/v1/images/generations", openai_generations)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static", STATIC)


async def read_json(request: web.Request, deadline: float) -> object:
    """The JSON body, read within --body-timeout and the request's deadline (a half-sent body does
    not hold the connection)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.content_type or 'nothing'}", "Content-Type"
        )
    loop = asyncio.get_running_loop()
    limit = min(request.app[SETTINGS].body_timeout, deadline - loop.time())
    try:
        async with asyncio.timeout(limit):
            raw = await request.read()  # over the size limit: aiohttp raises 413
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {limit:.1f} s") from None
    return decode_json_body(raw)


def request_deadline(request: web.Request) -> float:
    """The server's timeout, shortened by an X-Request-Timeout header (seconds) if the client sends one."""
    timeout = request.app[SETTINGS].request_timeout
    header = request.headers.get(TIMEOUT_HEADER)
    if header is not None:
        try:
            asked = float(header)
        except ValueError:
            asked = math.nan
        if not (math.isfinite(asked) and asked > 0):
            raise InvalidField(f"{TIMEOUT_HEADER} must be a positive number of seconds, got {header!r}", TIMEOUT_HEADER)
        timeout = min(timeout, asked)
    return asyncio.get_running_loop().time() + timeout


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in candidates or "*" in candidates


def image_headers(request: web.Request, job: ImageJob, key: str, truncated: list[str]) -> dict[str, str]:
    headers = {
        "ETag": f'"{key}"',
        "X-Seed": str(job.generation.seed),
        "X-Engine": request.app[ENGINE].info.name,
    }
    if truncated:
        headers["X-Prompt-Truncated"] = ", ".join(truncated)
    return headers


def require_ready(request: web.Request) -> None:
    readiness = request.app[READINESS]
    if not readiness.ready:
        raise NotReady(f"the model is not ready ({readiness.state})")


async def within_deadline(request: web.Request, awaitable: Awaitable[T], deadline: float) -> T:
    """Await until the request's deadline; past it, 504, counted as a deadline refusal (shared work
    goes on for its other waiters and may still fill the cache)."""
    try:
        return await asyncio.wait_for(awaitable, deadline - asyncio.get_running_loop().time())
    except asyncio.TimeoutError:
        request.app[METRICS].refused("deadline")
        raise DeadlineExceeded("the image was not ready before the request's deadline") from None


async def all_or_none(awaitables: list[Awaitable[T]]) -> list[T]:
    """Every result, or the first failure with the others cancelled (a batch refused with 429 does
    not go on computing its siblings)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def generate_image(request: web.Request) -> web.Response:
    require_ready(request)
    deadline = request_deadline(request)
    job = parse_generation_request(await read_json(request, deadline), request.app[LIMITS], request.headers.get("Accept"))
    images = request.app[IMAGES]
    key = images.key(job)
    found = await images.lookup(job, key)
    headers = image_headers(request, job, key, found.truncated)
    if etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
        return web.Response(status=304, headers=headers)
    result = await within_deadline(request, images.answer(job, key, deadline, found.cached), deadline)
    headers["X-Cache"] = result.cache_status
    return web.Response(body=result.data, content_type=job.media_type, headers=headers)


async def openai_generations(request: web.Request) -> web.Response:
    """The OpenAI Images API shape: n PNGs as base64 in one JSON answer."""
    require_ready(request)
    deadline = request_deadline(request)
    jobs = parse_openai_request(await read_json(request, deadline), request.app[LIMITS])
    images = request.app[IMAGES]
    results = await within_deadline(
        request, all_or_none([images.get(job, images.key(job), deadline) for job in jobs]), deadline
    )
    encoded = await asyncio.to_thread(lambda: [base64.b64encode(r.data).decode("ascii") for r in results])
    data = [{"b64_json": b64, "seed": job.generation.seed} for job, b64 in zip(jobs, encoded)]
    return web.json_response(
        {"created": int(time.time()), "data": data}, headers={"X-Engine": request.app[ENGINE].info.name}
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec(request.app[LIMITS]))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    readiness, engine = request.app[READINESS], request.app[ENGINE]
    body = {
        "ready": readiness.ready,
        "state": readiness.state,
        "detail": readiness.detail,
        "engine": engine.info.name,
        "engine_reason": engine.info.selection_reason,
        "model": engine.info.model_fingerprint,
        "queue_depth": request.app[ADMISSION].depth,
    }
    return web.json_response(body, status=200 if readiness.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    response = web.Response(body=registry.render())
    response.headers["Content-Type"] = registry.content_type
    return response


async def index(request: web.Request) -> web.Response:
    return web.Response(text=INDEX_PAGE, content_type="text/html")


async def favicon(request: web.Request) -> web.Response:
    """An SVG icon: browsers ask /favicon.ico whatever the page links, and take SVG from it."""
    return web.Response(body=FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
