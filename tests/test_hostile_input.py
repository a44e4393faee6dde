"""Every client mistake is a 4xx in the JSON error shape with no traceback in the log, including
what aiohttp's own parser refuses; slow clients are cut off by the header and body timeouts."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from aiohttp import web

from service.app import create_app
from service.cache import ImageCache
from service.server import ServiceRunner, runner_options
from service.settings import Settings
from service.state import READINESS
from tests.engines import ControlledEngine
from tests.helpers import free_port

DEEP = b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"

BAD_BODIES = [
    # (path, raw body, status, code, field)
    ("/generate-image", DEEP, 400, "malformed_body", None),
    ("/generate-image", b'{"prompt": "a \\ud800 cat"}', 422, "invalid_field", "prompt"),
    ("/generate-image", b'{"prompt": "a cat", "guidance_scale": 5, "negative_prompt": "\\udfff"}', 422, "invalid_field", "negative_prompt"),
    ("/generate-image", b'{"prompt": "a cat", "format": {}}', 422, "invalid_field", "format"),
    ("/generate-image", b'{"prompt": "a cat", "format": []}', 422, "invalid_field", "format"),
    # /v1 answers in OpenAI's shape: a field that breaks its rule is a 400 there, the field in `param`.
    ("/v1/images/generations", json.dumps({"prompt": "a cat", "size": "５１２x512"}).encode(), 400, "invalid_field", "size"),
    ("/v1/images/generations", json.dumps({"prompt": "a cat", "size": "²56x256"}).encode(), 400, "invalid_field", "size"),
    ("/v1/images/generations", b'{"prompt": "\\ud800"}', 400, "invalid_field", "prompt"),
]


@pytest.mark.parametrize(("path", "raw", "status", "code", "field"), BAD_BODIES)
async def test_bad_input_is_a_json_4xx_naming_the_field_without_a_traceback(make_client, caplog, path, raw, status, code, field):
    engine = ControlledEngine()
    client = await make_client(engine)
    reply = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    assert reply.status == status and reply.content_type == "application/json"
    error = (await reply.json())["error"]
    assert (error["code"], error["param"] if path.startswith("/v1/") else error["field"]) == (code, field)
    assert engine.requests_seen == 0
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


# --- over a real socket, through the runner the service uses -------------------------------------


@pytest.fixture
async def socket_service(tmp_path):
    """The app behind ServiceRunner on a free port, as `python -m service` serves it (short timeouts)."""
    settings = Settings(model="test", cache_dir=tmp_path / "cache", header_timeout=1.0, body_timeout=1.0)
    app = create_app(settings, ControlledEngine(), ImageCache(settings.cache_dir, settings.cache_size))
    runner = ServiceRunner(app, **runner_options(settings))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    while not app[READINESS].ready:
        await asyncio.sleep(0.01)
    yield port
    await runner.cleanup()


async def exchange(port: int, raw: bytes, wait_s: float = 5.0) -> tuple[bytes, float, float]:
    """Send `raw`, read until the server closes: the bytes, when the answer began and when the
    connection closed (seconds after sending)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(raw)
    await writer.drain()
    data, answered = b"", None
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), wait_s):
            answered = answered or time.monotonic() - started
            data += chunk
    finally:
        writer.close()
    closed = time.monotonic() - started
    return data, answered if answered is not None else closed, closed


def parse_reply(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


PARSER_ERRORS = {
    "huge-header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "content-length-and-chunked": (
        b"POST /generate-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad-request-line": b"GET /healthz HTTP/9.Z\r\n\r\n",
}


@pytest.mark.parametrize("raw", PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
async def test_aiohttps_own_parser_errors_come_back_as_json_without_a_traceback(socket_service, caplog, raw):
    data, _, _ = await exchange(socket_service, raw)
    status, headers, body = parse_reply(data)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "bad_http_request"
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake logged a traceback"


@pytest.mark.parametrize(
    "raw",
    [b"", b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"],
    ids=["idle", "half-request-line", "half-headers"],
)
async def test_a_connection_without_a_whole_request_is_closed_after_the_header_timeout(socket_service, raw):
    data, _, closed = await exchange(socket_service, raw)
    assert data == b"" and closed < 3.5, f"closed after {closed:.1f} s"


async def test_a_half_sent_body_gets_408_after_the_body_timeout(socket_service, caplog):
    caplog.set_level(logging.INFO)
    raw = (
        b"POST /generate-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{\"prompt\": "
    )
    data, answered, closed = await exchange(socket_service, raw)
    status, _, body = parse_reply(data)
    assert status == 408 and json.loads(body)["error"]["code"] == "body_timeout"
    assert 0.9 < answered < 2 and closed < 3.5
    assert not [r for r in caplog.records if r.exc_info]


async def test_the_request_deadline_covers_reading_the_body(socket_service):
    raw = (
        b"POST /generate-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-Timeout: 0.3\r\n"
        b"Content-Length: 100\r\n\r\n{\"prompt\": "
    )
    data, answered, _ = await exchange(socket_service, raw)
    assert parse_reply(data)[0] == 408 and answered < 0.9
