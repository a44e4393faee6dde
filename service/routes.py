"""HTTP handlers. They parse, ask CachedImages, and shape the answer; nothing here blocks."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from pathlib import Path
from typing import Awaitable, Callable, Mapping, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from service.cache_entry import EntryFile
from service.errors import (
    BodyTimeout, BodyTooLarge, DeadlineExceeded, InvalidField, MalformedBody, NotFound, NotReady, ShuttingDown, UnsupportedMediaType,
)
from service.openapi import openapi_spec
from service.schema import (
    FORMATS, MIN_REQUEST_TIMEOUT, RANDOM_SEED, ImageJob, decode_json_body, has_input_image, parse_generation_request, parse_openai_edit, parse_openai_request,
)
from service.state import ADMISSION, ENGINE, IMAGES, LIMITS, METRICS, READINESS, SETTINGS

STATIC = Path(__file__).with_name("static")
INDEX_PAGE = (STATIC / "index.html").read_text()
FAVICON = (STATIC / "favicon.svg").read_bytes()
TIMEOUT_HEADER = "X-Request-Timeout"
# Bodies up to the ordinary limit are parsed on the event loop (microseconds); larger ones carry an
# image (megabytes of base64 in JSON) and are parsed on a thread.
INLINE_JSON_BYTES = 64 * 1024
T = TypeVar("T")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/generate-image", generate_image)
    app.router.add_post("/v1/images/generations", openai_generations)
    app.router.add_post("/v1/images/edits", openai_edits)
    app.router.add_get("/v1/models", models)
    app.router.add_get(r"/images/{key:[0-9a-f]{64}}.{format:png|jpeg|webp}", stored_image)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static", STATIC)


async def read_body(request: web.Request, deadline: float) -> bytes:
    """The JSON body's bytes, read within --body-timeout and the request's deadline (a half-sent
    body does not hold the connection)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.content_type or 'nothing'}", "Content-Type"
        )
    # A body that has all arrived (a small one comes with the headers) cannot keep us waiting: no timer.
    if request.content.is_eof():
        return await request.read()
    limit = min(request.app[SETTINGS].body_timeout, deadline - asyncio.get_running_loop().time())
    # Still arriving: read it unless the shutdown timeout passes first (then 503, the rest unread).
    reading = asyncio.ensure_future(request.read())  # over the size limit: aiohttp raises 413
    stopping = asyncio.ensure_future(request.app[READINESS].stop_reading.wait())
    try:
        await asyncio.wait((reading, stopping), timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        reading.cancel()
    if reading.done() and not reading.cancelled():
        return reading.result()
    if stopping.done() and not stopping.cancelled():
        raise ShuttingDown("the service is shutting down and this request's body had not arrived; retry on another replica")
    raise BodyTimeout(f"the request body did not arrive within {limit:.1f} s")


async def decode_body(raw: bytes) -> object:
    if len(raw) <= INLINE_JSON_BYTES:
        return decode_json_body(raw)
    return await asyncio.to_thread(decode_json_body, raw)


async def read_json(request: web.Request, deadline: float) -> object:
    return await decode_body(await read_body(request, deadline))


def image_body_limit(request: web.Request) -> web.Request:
    """The routes that carry an input image read bodies up to --max-image-body-bytes; the rest keep --max-body-bytes."""
    return request.clone(client_max_size=request.app[SETTINGS].max_image_body_bytes)


async def read_image_route_body(request: web.Request, read: Callable[[web.Request], Awaitable[T]]) -> T:
    """`read` on the image routes' larger limit; over it, a 413 that names that limit. A body its
    Content-Length puts within the ordinary limit is read as it is (no copy of the request)."""
    if request.content_length is not None and request.content_length <= request.client_max_size:
        return await read(request)
    limit = request.app[SETTINGS].max_image_body_bytes
    try:
        return await read(image_body_limit(request))
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"the request body is larger than this route's limit of {limit} bytes (--max-image-body-bytes)", "image") from None


async def parse_off_loop(parse: Callable[..., T], body: object, *args: object) -> T:
    """Parse on the event loop, unless the body carries an image: decoding one is blocking work."""
    if has_input_image(body):
        return await asyncio.to_thread(parse, body, *args)
    return parse(body, *args)


def request_deadline(request: web.Request) -> float:
    """The server's timeout, shortened by an X-Request-Timeout header (seconds) if the client sends one."""
    timeout = request.app[SETTINGS].request_timeout
    header = request.headers.get(TIMEOUT_HEADER)
    if header is not None:
        try:
            asked = float(header)
        except ValueError:
            asked = math.nan
        if not (math.isfinite(asked) and asked >= MIN_REQUEST_TIMEOUT):
            raise InvalidField(f"{TIMEOUT_HEADER} must be a number of seconds, at least {MIN_REQUEST_TIMEOUT}, got {header!r}", TIMEOUT_HEADER)
        timeout = min(timeout, asked)
    return asyncio.get_running_loop().time() + timeout


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in candidates or "*" in candidates


def image_path(job: ImageJob, key: str) -> str:
    """Where GET /images/<key>.<format> serves the image `job` makes."""
    return f"/images/{key}.{job.output_format}"


def image_headers(request: web.Request, job: ImageJob, key: str, truncated: list[str]) -> dict[str, str]:
    headers = {
        "ETag": f'"{key}"',
        "Content-Location": image_path(job, key),  # the same bytes, by their content address
        "X-Seed": str(job.generation.seed),
        "X-Num-Inference-Steps": str(job.generation.num_inference_steps),
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
        async with asyncio.timeout_at(deadline):  # not wait_for: on Python 3.11 that makes a task per request
            return await awaitable
    except TimeoutError:
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
    images = request.app[IMAGES]
    job, key = await generation_job(request, deadline)
    if_none_match = request.headers.get("If-None-Match")
    entry = images.memory_hit(key)
    if entry is not None and if_none_match is None:
        # The hot path: the headers were made at this image's first memory hit and kept with it.
        headers = entry.hit_headers
        if headers is None:
            headers = CIMultiDict(image_headers(request, job, key, list(entry.truncated or ())))
            headers.update({"X-Cache": "HIT", "X-Cache-Tier": "memory", "Content-Type": job.media_type})
            entry.hit_headers = headers
        request.app[METRICS].cache_result("HIT")
        return web.Response(body=entry.image, headers=headers)
    found = await images.lookup(job, key)
    headers = image_headers(request, job, key, found.truncated)
    if etag_matches(if_none_match, headers["ETag"]):
        if found.cached is not None:
            found.cached.discard()
        return web.Response(status=304, headers=headers)
    answer = images.answer(job, key, deadline, found.cached)
    # A hit is answered at once; only a miss waits, within the deadline.
    result = await (answer if found.cached is not None else within_deadline(request, answer, deadline))
    headers["X-Cache"] = result.cache_status
    if result.tier is not None:
        headers["X-Cache-Tier"] = result.tier
    if isinstance(result.data, EntryFile):
        return EntryFileResponse(result.data, job.media_type, headers)
    return web.Response(body=result.data, content_type=job.media_type, headers=headers)


class EntryFileResponse(web.StreamResponse):
    """An image sent from its open, checked cache file by sendfile(2): its bytes never enter Python
    (asyncio reads them in chunks on a thread where the transport cannot sendfile, as with TLS)."""

    def __init__(self, entry: EntryFile, content_type: str, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        self.content_type = content_type
        self.content_length = entry.image_size
        self._entry = entry

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        with self._entry.file:
            writer = await super().prepare(request)
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("the client went away")
            await asyncio.get_running_loop().sendfile(transport, self._entry.file, 0, self._entry.image_size)
        await super().write_eof()
        return writer


async def generation_job(request: web.Request, deadline: float) -> tuple[ImageJob, str]:
    """The request's job and content key; a body seen lately (a repeat) is not parsed again."""
    raw = await read_image_route_body(request, lambda r: read_body(r, deadline))
    accept = request.headers.get("Accept")
    images = request.app[IMAGES]
    known = images.recent.get(raw, accept)
    if known is not None:
        return known
    body = await decode_body(raw)
    job = await parse_off_loop(parse_generation_request, body, request.app[LIMITS], accept)
    key = images.key(job)
    if not has_input_image(body) and body.get("seed") != RANDOM_SEED:  # type: ignore[union-attr] (parsed: an object)
        images.recent.put(raw, accept, job, key)
    return job, key


async def openai_generations(request: web.Request) -> web.Response:
    """The OpenAI Images API shape: n PNGs as base64 in one JSON answer."""
    require_ready(request)
    deadline = request_deadline(request)
    body = await read_json(request, deadline)
    jobs = parse_openai_request(body, request.app[LIMITS])  # a body that is not an object stops here
    return await openai_answer(request, jobs, deadline, body.get("response_format") == "url")


async def openai_edits(request: web.Request) -> web.Response:
    """OpenAI's images.edit: a multipart form with the image file; the same path as an image in /generate-image."""
    require_ready(request)
    deadline = request_deadline(request)
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"Content-Type must be multipart/form-data, got {request.content_type or 'nothing'}", "Content-Type"
        )
    form = await read_image_route_body(request, read_form)
    limits = request.app[LIMITS]
    fields = await asyncio.to_thread(form_fields, form)
    jobs = await asyncio.to_thread(parse_openai_edit, fields, limits)
    return await openai_answer(request, jobs, deadline, fields.get("response_format") == "url")


async def read_form(request: web.Request) -> Mapping[str, object]:
    """The multipart form; a malformed one (no boundary, cut parts) is the client's mistake, a 400."""
    try:
        return await request.post()
    except (ValueError, AssertionError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the multipart/form-data body cannot be read ({exc.__class__.__name__}: {exc})") from None


def form_fields(form: Mapping[str, object]) -> dict[str, str | bytes]:
    """One value per field; a file part as its bytes (blocking: aiohttp spools files to disk)."""
    fields: dict[str, str | bytes] = {}
    for name in dict.fromkeys(form):
        values = form.getall(name)  # type: ignore[attr-defined]
        key = name.removesuffix("[]")  # clients that send arrays of images name the part image[]
        if len(values) > 1 or key in fields:
            raise InvalidField(f"{key}: one value expected, got {len(values)} (this service edits one image)", key)
        value = values[0]
        fields[key] = value.file.read() if isinstance(value, web.FileField) else value
    return fields


async def openai_answer(request: web.Request, jobs: list[ImageJob], deadline: float, as_urls: bool) -> web.Response:
    """n images in one JSON answer, as base64 or as URLs this service serves (/images/<key>.<format>),
    each cached like a /generate-image request; every item says its seed, to make it again."""
    images = request.app[IMAGES]
    keys = [images.key(job) for job in jobs]
    results = await within_deadline(
        request, all_or_none([images.get(job, key, deadline) for job, key in zip(jobs, keys)]), deadline
    )
    if as_urls:
        base = f"{request.scheme}://{request.host}"
        data = [{"url": base + image_path(job, key), "seed": job.generation.seed} for job, key in zip(jobs, keys)]
    else:
        encoded = await asyncio.to_thread(lambda: [base64.b64encode(r.data).decode("ascii") for r in results])
        data = [{"b64_json": b64, "seed": job.generation.seed} for job, b64 in zip(jobs, encoded)]
    # The n images share their steps: an edit's default count is said here, as /generate-image says it.
    headers = {"X-Engine": request.app[ENGINE].info.name, "X-Num-Inference-Steps": str(jobs[0].generation.num_inference_steps)}
    return web.json_response({"created": int(time.time()), "data": data}, headers=headers)


async def stored_image(request: web.Request) -> web.Response:
    """GET /images/<key>.<format>: an image by its content address; the bytes never change, so caches
    and CDNs may keep it for a year."""
    key, output_format = request.match_info["key"], request.match_info["format"]
    data = await request.app[IMAGES].stored(key, output_format)
    if data is None:
        raise NotFound(f"no image {key}.{output_format} here (never made, or evicted from the cache): make it again with the same request")
    headers = {"ETag": f'"{key}"', "Cache-Control": "public, max-age=31536000, immutable"}
    if etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=FORMATS[output_format], headers=headers)


async def models(request: web.Request) -> web.Response:
    """GET /v1/models: the one model this service serves, as OpenAI's clients list it."""
    engine = request.app[ENGINE]
    model = {"id": request.app[SETTINGS].model, "object": "model", "created": 0, "owned_by": "sdxl-turbo-service",
             "engine": engine.info.name, "fingerprint": engine.info.model_fingerprint}
    return web.json_response({"object": "list", "data": [model]})


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
