"""SIGTERM loses nothing admitted: a request whose headers came before the signal and whose body is
still arriving is served within --shutdown-timeout, or answered 503 with Retry-After before the rest
of its body is read; never a reset connection, never a 503 after the whole body was sent."""

from __future__ import annotations

import asyncio
import json
import signal
import time

from tests.helpers import ServiceProcess, generate

SHUTDOWN_TIMEOUT_S = 4.0
PAYLOAD = {"prompt": "a body that arrives slowly", "seed": 9}


async def slow_post(port: int, body: bytes, pieces: int, pause_s: float, headers_sent: asyncio.Event) -> tuple[bytes, int]:
    """POST /generate-image writing the body in `pieces`, `pause_s` apart, reading as it goes;
    (everything the server answered, how many pieces were sent before the answer began)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST /generate-image HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head)
    await writer.drain()
    headers_sent.set()
    step = -(-len(body) // pieces)
    answer, sent = b"", 0
    reading = asyncio.ensure_future(reader.read())  # until the server closes; a reset raises
    for start in range(0, len(body), step):
        await asyncio.sleep(pause_s)
        if reading.done():
            break
        writer.write(body[start : start + step])
        await writer.drain()
        sent += 1
    answer = await asyncio.wait_for(reading, 30)
    writer.close()
    return answer, sent


def status_and_headers(answer: bytes) -> tuple[int, dict[str, str]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), {k.lower(): v for k, v in headers.items()}


def test_bodies_arriving_during_shutdown_are_served_or_refused_before_they_are_read(presets_dir, tmp_path):
    service = ServiceProcess(["--model", "tiny", "--precision", "fp32", "--presets-dir", str(presets_dir),
                              "--cache-dir", str(tmp_path / "cache"), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S)])
    try:
        service.wait_ready()
        assert generate(service.base_url, PAYLOAD).status == 200  # made now: the slow request below is a hit
        body = json.dumps(PAYLOAD).encode()
        # Padding after the JSON object is whitespace: the same request, a body long enough to send in pieces.
        long_body = body + b" " * 400

        async def scenario() -> tuple[tuple[bytes, int], tuple[bytes, int]]:
            quick_headers, slow_headers = asyncio.Event(), asyncio.Event()
            # Finishes its body a second after the signal: well within the shutdown timeout.
            quick = asyncio.ensure_future(slow_post(service.port, long_body, 4, 0.5, quick_headers))
            # Would finish its body 10 s after the signal: past the shutdown timeout.
            slow = asyncio.ensure_future(slow_post(service.port, long_body, 20, 0.75, slow_headers))
            await quick_headers.wait()
            await slow_headers.wait()
            await asyncio.sleep(0.3)  # both requests' headers are in
            service.process.send_signal(signal.SIGTERM)
            return await quick, await slow

        started = time.monotonic()
        (quick_answer, _), (slow_answer, slow_sent) = asyncio.run(scenario())
        took = time.monotonic() - started
        assert service.process.wait(30) == 0, service.log()[-2000:]
    finally:
        service.stop()
    status, headers = status_and_headers(quick_answer)
    assert status == 200 and headers["content-type"] == "image/png", quick_answer[:300]
    status, headers = status_and_headers(slow_answer)
    assert status == 503 and int(headers["retry-after"]) >= 1, slow_answer[:500]
    assert slow_sent < 20, "answered 503 only after the whole body was sent"
    assert took < SHUTDOWN_TIMEOUT_S + 5
