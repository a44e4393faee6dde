"""Readiness, health while the model works, and the cache's promises under faults."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import stat
import threading

from service.cache_disk import frame, unframe
from service.cache_entry import decode
from tests.engines import ControlledEngine

GOOD = {"prompt": "a cat", "seed": 1}


async def test_healthz_answers_at_once_while_an_image_is_being_made(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    engine.release.clear()  # hold the engine mid-generate
    pending = asyncio.create_task(client.post("/generate-image", json=GOOD))
    await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
    health = await asyncio.wait_for(client.get("/healthz"), timeout=2)
    ready = await asyncio.wait_for(client.get("/readyz"), timeout=2)
    assert health.status == 200 and ready.status == 200
    assert not pending.done(), "the image must still be in the making"
    engine.release.set()
    reply = await pending
    assert reply.status == 200 and reply.headers["X-Cache"] == "MISS"


class SlowLoadingEngine(ControlledEngine):
    def __init__(self) -> None:
        super().__init__()
        self.may_load = threading.Event()

    def load(self) -> None:
        self.may_load.wait(timeout=30)
        super().load()


async def test_readyz_is_503_until_loaded_and_generation_waits_for_it(aiohttp_client, tmp_path):
    from service.app import create_app
    from service.cache import ImageCache
    from service.settings import Settings

    engine = SlowLoadingEngine()
    settings = Settings(model="test", cache_dir=tmp_path / "cache")
    client = await aiohttp_client(create_app(settings, engine, ImageCache(settings.cache_dir, settings.cache_size)))
    assert (await client.get("/healthz")).status == 200
    loading = await client.get("/readyz")
    assert loading.status == 503 and (await loading.json())["state"] == "loading"
    early = await client.post("/generate-image", json=GOOD)
    assert early.status == 503 and "Retry-After" in early.headers
    assert (await early.json())["error"]["code"] == "not_ready"
    engine.may_load.set()
    for _ in range(100):
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.02)
    assert (await client.post("/generate-image", json=GOOD)).status == 200


async def test_cache_stores_raw_image_bytes_in_a_private_directory(make_client, tmp_path):
    client = await make_client(ControlledEngine())
    reply = await client.post("/generate-image", json=GOOD)
    png = await reply.read()
    cache_dir = tmp_path / "cache"
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    with sqlite3.connect(cache_dir / "cache.db") as db:
        rows = db.execute("SELECT key, mode, value, filename FROM Cache").fetchall()
    assert len(rows) == 1
    key, mode, value, filename = rows[0]
    assert f'"{key}"' == reply.headers["ETag"]
    assert mode in (1, 2)  # diskcache's MODE_RAW / MODE_BINARY: no pickle
    if filename is None:
        stored = unframe(value)
    else:  # the frame's header in the database, the value alone in its file (sent as it is)
        stored = (cache_dir / filename).read_bytes()
        assert bytes(value) == frame(stored)[: len(value)]
    assert decode(stored).image == png


class BrokenDiskCache:
    """Stands in for the diskcache.Cache inside an ImageCache: every read and write fails."""

    def get(self, *args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    set = delete = get

    def close(self):
        pass


async def test_a_failing_cache_costs_a_miss_not_the_request(make_client, caplog):
    engine = ControlledEngine()
    client = await make_client(engine, memory_cache_size=0)  # the disk tier under test
    from service.state import CACHE

    client.app[CACHE]._cache = BrokenDiskCache()
    first = await client.post("/generate-image", json=GOOD)
    second = await client.post("/generate-image", json=GOOD)
    assert first.status == second.status == 200
    assert first.headers["X-Cache"] == second.headers["X-Cache"] == "MISS"
    assert await first.read() == await second.read()
    assert "image cache read failed" in caplog.text and "image cache write failed" in caplog.text


async def test_cache_failures_are_logged_with_the_id_of_the_request_they_cost(make_client):
    """The cache is read and written on worker threads; their log lines still name the request."""
    from service.logs import JsonFormatter
    from service.state import CACHE

    client = await make_client(ControlledEngine())
    client.app[CACHE]._cache = BrokenDiskCache()
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())  # formats as the record is emitted, on the thread that logs it
    cache_logger = logging.getLogger("service.cache")
    cache_logger.addHandler(handler)
    try:
        reply = await client.post("/generate-image", json=GOOD, headers={"X-Request-Id": "some-id"})
    finally:
        cache_logger.removeHandler(handler)
    assert reply.status == 200
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    failures = {entry["message"].split(" failed")[0]: entry.get("request_id") for entry in logged}
    assert failures == {"image cache read": "some-id", "image cache write": "some-id"}, logged


async def test_the_engine_thread_runs_in_the_callers_context():
    """What runs on the engine's own thread logs with the id of the request that is being served."""
    from service.admission import AdmissionQueue
    from service.logs import current_request_id

    admission = AdmissionQueue(ControlledEngine(), max_queue=1)
    current_request_id.set("engine-call")
    try:
        assert await admission.call_engine(current_request_id.get) == "engine-call"
    finally:
        await admission.close()


async def test_a_corrupt_entry_is_dropped_and_the_image_made_again(make_client):
    engine = ControlledEngine()
    client = await make_client(engine, memory_cache_size=0)  # the disk tier under test
    from service.state import CACHE

    good = await (await client.post("/generate-image", json=GOOD)).read()
    cache = client.app[CACHE]
    key = next(iter(cache._cache))
    cache._cache.set(key, b"garbage that is not a png")
    again = await client.post("/generate-image", json=GOOD)
    assert again.status == 200 and again.headers["X-Cache"] == "MISS"
    assert await again.read() == good
    assert engine.requests_seen == 2


async def test_closing_the_app_closes_engine_and_cache(aiohttp_client, tmp_path):
    from service.app import create_app
    from service.cache import ImageCache
    from service.settings import Settings

    class RecordingCache(ImageCache):
        closed = False

        def close(self) -> None:
            super().close()
            self.closed = True

    engine = ControlledEngine()
    settings = Settings(model="test", cache_dir=tmp_path / "cache")
    cache = RecordingCache(settings.cache_dir, settings.cache_size)
    client = await aiohttp_client(create_app(settings, engine, cache))
    assert not (engine.closed or cache.closed)
    await client.close()
    assert engine.closed and cache.closed
