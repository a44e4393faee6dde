"""Error types and the one place that turns them into HTTP responses.

Client mistakes are `ApiError`s, raised by our own code with a field and a rule. Anything else that
escapes a handler is a bug or an engine failure: a 500 with a request id, never a traceback.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Awaitable, Callable

from aiohttp import web

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_KEY = web.RequestKey("request_id", str)


class ApiError(Exception):
    """An error the client can act on: HTTP status, a stable code, a message naming the rule."""

    status = 400
    code = "bad_request"
    close_connection = False  # True where the rest of the request cannot be trusted to arrive

    def __init__(self, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class MalformedBody(ApiError):
    status, code = 400, "malformed_body"


class InvalidField(ApiError):
    status, code = 422, "invalid_field"


class BodyTimeout(ApiError):
    status, code, close_connection = 408, "body_timeout", True


class NotFound(ApiError):
    status, code = 404, "not_found"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class BodyTooLarge(ApiError):
    """Over a route's own body limit (the image routes raise theirs above the app's)."""

    status, code = 413, "body_too_large"


class Overloaded(ApiError):
    """The admission queue is full: come back after `retry_after` seconds."""

    status, code = 429, "queue_full"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class NotReady(ApiError):
    """Loading, warming up, or draining for shutdown."""

    status, code = 503, "not_ready"

    def __init__(self, message: str, retry_after: float = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class ShuttingDown(NotReady):
    """Past the shutdown timeout with the request's body still arriving: answered before the rest is
    read, and the connection closed after the answer (the rest of the body is not awaited)."""

    close_connection = True


class DeadlineExceeded(ApiError):
    status, code = 504, "deadline_exceeded"


# aiohttp raises these itself (routing, body size); they get the same JSON shape.
_HTTP_CODES = {
    404: ("not_found", "no such path: {path}"),
    405: ("method_not_allowed", "{method} is not allowed on {path}"),
    413: ("body_too_large", "the request body is larger than the limit of {limit} bytes"),
}


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, **extra}}


def json_error(status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response(error_body(code, message, field, **extra), status=status, headers=headers)


OPENAI_PREFIX = "/v1/"
# OpenAI's error types by status; its clients raise BadRequestError for 400, AuthenticationError for
# 401, RateLimitError for 429, InternalServerError for 5xx, and read `param` for the field.
_OPENAI_TYPES = {401: "invalid_request_error", 429: "requests"}


def openai_error(status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """The /v1 routes answer errors in OpenAI's shape: a field that breaks its rule is a 400 there."""
    status = 400 if status == 422 else status
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": field, "code": code, **extra}}
    return web.json_response(body, status=status, headers=headers)


def error_response(request: web.Request, status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """Our JSON error, in OpenAI's shape on the OpenAI-compatible routes."""
    render = openai_error if request.path.startswith(OPENAI_PREFIX) else json_error
    return render(status, code, message, field, headers, **extra)


def error_answer(request: web.Request, exc: Exception, max_body_bytes: int) -> web.Response:
    """The JSON answer for an exception a handler raised (an aiohttp HTTPException below 400 is
    re-raised: it is a redirect or a 304, not an error)."""
    if isinstance(exc, ApiError):
        response = error_response(request, exc.status, exc.code, exc.message, exc.field, exc.headers)
        if exc.close_connection:
            response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code, template = _HTTP_CODES.get(exc.status, ("http_error", exc.reason or "error"))
        message = template.format(path=request.path, method=request.method, limit=max_body_bytes)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(request, exc.status, code, message, headers=headers)
    request_id = request[REQUEST_ID_KEY]
    logger.error("request %s failed: %s %s", request_id, request.method, request.path, exc_info=exc)
    message = f"the server failed to make this image; request id {request_id}"
    return error_response(request, 500, "internal_error", message, request_id=request_id)


def error_middleware(max_body_bytes: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Errors as JSON answers, for a middleware that must see them as answers (CORS); the service's
    outermost middleware (service/app.py) does the same for everything else."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:
            return error_answer(request, exc, max_body_bytes)

    return middleware
