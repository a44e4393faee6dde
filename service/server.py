"""ServiceRunner: aiohttp's AppRunner, with the connection-level errors in our JSON shape.

A request aiohttp's own parser refuses (a header over the size limit, Content-Length with
Transfer-Encoding, a malformed request line) never reaches a middleware: aiohttp answers it itself,
as text/plain, and logs a traceback. That is a client's mistake, so it gets the JSON error shape
and one log line without a traceback. aiohttp has no public hook for this, so the runner's server
makes connections with a RequestHandler subclass.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from service.errors import error_body
from service.logs import access_log_options
from service.settings import Settings

logger = logging.getLogger(__name__)
# Our drain has already spent --shutdown-timeout; answers still being written get this much more.
RESPONSE_GRACE_S = 1.0


def runner_options(settings: Settings) -> dict[str, Any]:
    """What ServiceRunner is given, in one place for the service and its tests."""
    return dict(
        # Cancel a handler whose client went away: its queued request frees its place.
        handler_cancellation=True,
        **access_log_options(settings.access_log),
        # aiohttp closes a connection that sends no complete request within this (idle or half-sent).
        keepalive_timeout=settings.header_timeout,
        # After answering a request whose body was not read (408, 413, 415), drain it at most this
        # long before closing (aiohttp's default is 10 s).
        lingering_time=1.0,
        shutdown_timeout=RESPONSE_GRACE_S,
    )


class _JsonErrorRequestHandler(RequestHandler):
    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:  # a fault of ours: aiohttp logs it with its traceback
            return super().handle_error(request, status, exc, message)
        reason = message or (str(exc) if exc else "bad request")
        logger.info("refused a malformed HTTP request from %s: %s %s", request.remote, status, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; the connection is closed")
        response = web.json_response(error_body("bad_http_request", f"malformed HTTP request: {reason}"), status=status)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class ServiceRunner(web.AppRunner):
    """An AppRunner whose connections answer parser errors in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the same server, making our handler per connection
        return server
