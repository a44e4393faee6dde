"""Serving under load: bounded queue, deadlines, disconnects, micro-batching, metrics, drain."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
import time

import pytest

from service.state import ADMISSION, drain
from tests.engines import ControlledEngine
from tests.helpers import ServiceProcess, generate, metric, request


def job(i: int, **extra) -> dict:
    return {"prompt": f"request {i}", "seed": i, **extra}


async def hold_engine_busy(client, engine: ControlledEngine) -> asyncio.Task:
    """Start one request and keep the engine inside generate() until engine.release.set()."""
    engine.release.clear()
    engine.started.clear()
    task = asyncio.create_task(client.post("/generate-image", json=job(-100 % 1000)))
    await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
    return task


async def wait_for_depth(client, depth: int) -> None:
    for _ in range(200):
        if client.app[ADMISSION].depth == depth:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"queue depth {client.app[ADMISSION].depth}, expected {depth}")


async def test_full_queue_refuses_at_once_with_retry_after(make_client):
    engine = ControlledEngine()
    client = await make_client(engine, max_queue=2)
    running = await hold_engine_busy(client, engine)
    queued = [asyncio.create_task(client.post("/generate-image", json=job(i))) for i in range(2)]
    await wait_for_depth(client, 2)
    refused = [await client.post("/generate-image", json=job(i)) for i in range(10, 13)]
    assert [r.status for r in refused] == [429, 429, 429]
    assert int(refused[0].headers["Retry-After"]) >= 1
    assert (await refused[0].json())["error"]["code"] == "queue_full"
    assert client.app[ADMISSION].depth == 2, "the queue never grows past its bound"
    engine.release.set()
    assert [r.status for r in await asyncio.gather(running, *queued)] == [200, 200, 200]
    assert engine.requests_seen == 3


async def test_a_request_past_its_deadline_is_answered_504_and_never_reaches_the_model(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    running = await hold_engine_busy(client, engine)
    late = await client.post("/generate-image", json=job(1), headers={"X-Request-Timeout": "0.3"})
    assert late.status == 504 and (await late.json())["error"]["code"] == "deadline_exceeded"
    await wait_for_depth(client, 0)
    engine.release.set()
    assert (await running).status == 200
    await asyncio.sleep(0.1)
    assert [r.prompt for batch in engine.calls for r in batch] == ["request 900"]


async def test_a_client_that_disconnects_frees_its_place(make_client):
    engine = ControlledEngine()
    client = await make_client(engine, max_queue=1)
    running = await hold_engine_busy(client, engine)
    gone = asyncio.create_task(client.post("/generate-image", json=job(1)))
    await wait_for_depth(client, 1)
    gone.cancel()  # the client closes its connection
    await wait_for_depth(client, 0)
    kept = asyncio.create_task(client.post("/generate-image", json=job(2)))
    await wait_for_depth(client, 1)
    engine.release.set()
    assert (await running).status == 200 and (await kept).status == 200
    assert [r.prompt for batch in engine.calls for r in batch] == ["request 900", "request 2"]


async def test_batched_requests_get_exactly_their_own_images(make_client, presets_dir):
    """Four requests in one UNet batch give byte for byte what each gets alone (each keeps its seed)."""
    from engines.backends.torch_engine import TorchEngine

    batched_engine = TorchEngine("tiny", "cpu", presets_dir=presets_dir)
    sizes: list[int] = []
    generate_batch = batched_engine.generate
    batched_engine.generate = lambda requests: sizes.append(len(requests)) or generate_batch(requests)
    batching = await make_client(batched_engine, max_batch=4, batch_window_ms=2000)
    payloads = [job(i, num_inference_steps=2) for i in range(4)]
    replies = await asyncio.gather(*(batching.post("/generate-image", json=p) for p in payloads))
    assert 4 in sizes, f"expected one batch of 4, got batches of {sizes}"
    single = await make_client(TorchEngine("tiny", "cpu", presets_dir=presets_dir), max_batch=1)
    for payload, reply in zip(payloads, replies):
        alone = await single.post("/generate-image", json=payload)
        assert reply.status == alone.status == 200
        assert reply.headers["X-Seed"] == alone.headers["X-Seed"] == str(payload["seed"])
        assert await reply.read() == await alone.read()
    assert len({await r.read() for r in replies}) == 4


async def test_batches_only_group_requests_that_can_share_a_unet_call(make_client):
    engine = ControlledEngine()
    client = await make_client(engine, max_batch=4, batch_window_ms=300)
    payloads = [job(1), job(2, width=256), job(3), job(4, num_inference_steps=2)]
    replies = await asyncio.gather(*(client.post("/generate-image", json=p) for p in payloads))
    assert all(r.status == 200 for r in replies)
    grouped = sorted(sorted(r.prompt for r in batch) for batch in engine.calls)
    assert grouped == [["request 1", "request 3"], ["request 2"], ["request 4"]]


async def test_metrics_move_as_the_requests_say(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    await client.post("/generate-image", json=job(1))
    await client.post("/generate-image", json=job(1))
    await client.post("/generate-image", json={"prompt": ""})
    text = await (await client.get("/metrics")).text()
    assert metric(text, "sdxl_http_requests_total", route="/generate-image", status="200") == 2
    assert metric(text, "sdxl_http_requests_total", route="/generate-image", status="422") == 1
    assert metric(text, "sdxl_cache_lookups_total", result="miss") == 1
    assert metric(text, "sdxl_cache_lookups_total", result="hit") == 1
    assert metric(text, "sdxl_batch_size_count") == 1
    assert metric(text, "sdxl_stage_seconds_count", stage="queue_wait") == 1
    assert metric(text, "sdxl_stage_seconds_count", stage="image_encoding") == 1
    assert metric(text, "sdxl_stage_seconds_count", stage="request") == 3
    assert metric(text, "sdxl_queue_depth") == 0


async def test_drain_refuses_new_work_and_finishes_what_is_in_flight(make_client):
    engine = ControlledEngine()
    client = await make_client(engine, shutdown_timeout=10)
    running = await hold_engine_busy(client, engine)
    draining = asyncio.create_task(drain(client.app))
    await asyncio.sleep(0.05)
    assert (await client.get("/readyz")).status == 503
    refused = await client.post("/generate-image", json=job(5))
    assert refused.status == 503 and (await refused.json())["error"]["code"] == "not_ready"
    engine.release.set()
    assert (await running).status == 200
    assert await draining is True


@pytest.mark.slow
def test_sigterm_with_requests_in_flight_drains_and_exits_0(presets_dir, tmp_path):
    service = ServiceProcess(
        ["--model", "tiny", "--presets-dir", str(presets_dir), "--cache-dir", str(tmp_path / "c"), "--max-steps", "4",
         "--precision", "fp32", "--shutdown-timeout", "60"]
    )
    try:
        service.wait_ready()
        slow = {"num_inference_steps": 4, "guidance_scale": 5.0}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(generate, service.base_url, job(i, **slow)) for i in range(3)]
            time.sleep(1.0)  # all three are in the service now
            service.process.send_signal(signal.SIGTERM)
            replies = [f.result(timeout=120) for f in futures]
        assert [r.status for r in replies] == [200, 200, 200]
        assert service.process.wait(timeout=60) == 0
    finally:
        service.stop()
    assert '"message": "stopping (signal); draining in-flight requests"' in service.log()


def test_a_flood_gets_only_200s_and_clean_429s_while_health_answers(tiny_service):
    url = tiny_service.base_url
    health_codes: list[int] = []
    done = threading.Event()

    def watch_health() -> None:
        while not done.is_set():
            health_codes.append(request(url, "GET", "/healthz", timeout=5).status)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            replies = list(pool.map(lambda i: generate(url, job(5000 + i)), range(64)))
    finally:
        done.set()
        watcher.join()
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 32  # at least a full queue's worth got through
    for reply in replies:
        if reply.status == 429:
            assert reply.json()["error"]["code"] == "queue_full" and int(reply.headers["retry-after"]) >= 1
        else:
            assert reply.image().size == (512, 512)
    assert health_codes and set(health_codes) == {200}
    # Probes are logged at DEBUG only; the requests' own lines carry their ids.
    log_line = next(line for line in tiny_service.log().splitlines() if '"path": "/generate-image"' in line)
    assert '"request_id": ' in log_line


async def test_a_shared_computation_lives_while_any_of_its_waiters_does(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    running = await hold_engine_busy(client, engine)
    first = asyncio.create_task(client.post("/generate-image", json=job(7)))
    await wait_for_depth(client, 1)
    second = asyncio.create_task(client.post("/generate-image", json=job(7)))
    await asyncio.sleep(0.1)
    first.cancel()  # one of the two identical requests leaves
    await asyncio.sleep(0.1)
    assert client.app[ADMISSION].depth == 1, "the other waiter keeps the queued work"
    engine.release.set()
    reply = await second
    assert reply.status == 200 and reply.headers["X-Cache"] == "SHARED"
    assert (await running).status == 200
    assert [r.prompt for batch in engine.calls for r in batch] == ["request 900", "request 7"]


@pytest.mark.slow
def test_sigterm_with_a_queue_longer_than_the_timeout_answers_503_and_exits_0_in_time(presets_dir, tmp_path):
    """--shutdown-timeout 1 with 12 large requests queued: what did not finish is answered 503 and
    the process exits 0 within the timeout plus a second or two (aiohttp's own 60 s does not apply)."""
    service = ServiceProcess(
        ["--model", "tiny", "--presets-dir", str(presets_dir), "--cache-dir", str(tmp_path / "c"),
         "--shutdown-timeout", "1", "--precision", "fp32",
         "--max-queue", "512"]  # each request costs 32 units (1024x1024, 4 steps, guided): all twelve must queue
    )
    try:
        service.wait_ready()
        slow = {"width": 1024, "height": 1024, "num_inference_steps": 4, "guidance_scale": 5.0}
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(generate, service.base_url, job(100 + i, **slow)) for i in range(12)]
            time.sleep(1.0)  # all twelve are in the service now
            signalled = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            code = service.process.wait(timeout=30)
            exited_after = time.monotonic() - signalled
            replies = [f.result(timeout=30) for f in futures]
    finally:
        service.stop()
    assert code == 0, service.log()
    assert exited_after < 1 + 2.5, f"exited {exited_after:.1f} s after SIGTERM"
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 6, statuses
    for reply in replies:
        if reply.status == 503:
            assert reply.json()["error"]["code"] == "not_ready" and "Retry-After" in {k.title() for k in reply.headers}


async def test_coalesced_requests_each_keep_their_own_deadline(make_client):
    """A (X-Request-Timeout 0.5) and B (identical, default deadline) share one computation: A gets
    504, B its image; the work is not dropped for A's deadline."""
    engine = ControlledEngine()
    client = await make_client(engine)
    running = await hold_engine_busy(client, engine)
    a = asyncio.create_task(client.post("/generate-image", json=job(8), headers={"X-Request-Timeout": "0.5"}))
    await wait_for_depth(client, 1)
    b = asyncio.create_task(client.post("/generate-image", json=job(8)))
    assert (await a).status == 504
    await asyncio.sleep(0.7)  # past A's deadline, while the engine is still busy
    engine.release.set()
    reply = await b
    assert reply.status == 200 and reply.headers["X-Cache"] == "SHARED"
    assert (await running).status == 200
    assert [r.prompt for batch in engine.calls for r in batch] == ["request 900", "request 8"]


async def test_metrics_count_504s_as_deadline_refusals_and_disconnects_as_499(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    running = await hold_engine_busy(client, engine)
    shared = asyncio.create_task(client.post("/generate-image", json=job(9)))
    await wait_for_depth(client, 1)
    # Joins the queued work (so the queue does not drop it); its own deadline fires in the route.
    late = await client.post("/generate-image", json=job(9), headers={"X-Request-Timeout": "0.2"})
    assert late.status == 504
    gone = asyncio.create_task(client.post("/generate-image", json=job(10)))
    await wait_for_depth(client, 2)
    gone.cancel()
    await wait_for_depth(client, 1)
    engine.release.set()
    assert (await running).status == 200 and (await shared).status == 200
    text = await (await client.get("/metrics")).text()
    assert metric(text, "sdxl_refused_requests_total", reason="deadline") == 1
    assert metric(text, "sdxl_http_requests_total", route="/generate-image", status="499") == 1
    assert "status=\"500\"" not in text


async def test_an_openai_batch_refused_with_429_cancels_its_siblings(make_client):
    engine = ControlledEngine()
    client = await make_client(engine, max_queue=2)
    running = await hold_engine_busy(client, engine)
    reply = await client.post("/v1/images/generations", json={"prompt": "four cats", "n": 4})
    assert reply.status == 429
    await wait_for_depth(client, 0)  # the two that got in were cancelled with the refused ones
    engine.release.set()
    assert (await running).status == 200
    await asyncio.sleep(0.2)
    assert engine.requests_seen == 1
