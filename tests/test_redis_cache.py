"""The shared tier with real parts: a real redis-server on a free loopback port, two real service
processes sharing it (both from tests/conftest.py, shared with tests/test_load_balancer.py). Plus the memory tier's own promises, in process."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.redis_server import REDIS_SERVER
from service.cache_entry import Entry
from service.redis_tier import LEASE_MS
from service.tiers import MemoryTier
from tests.engines import ControlledEngine
from tests.helpers import ServiceProcess, engine_calls, generate, metric, replica_args, request

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make test installs it)")


def test_a_miss_on_one_replica_is_a_hit_on_the_other(redis_replicas):
    a, b = redis_replicas
    first = generate(a.base_url, {"prompt": "a shared lighthouse", "seed": 1})
    second = generate(b.base_url, {"prompt": "a shared lighthouse", "seed": 1})
    assert (first.headers["x-cache"], second.headers["x-cache"], second.headers["x-cache-tier"]) == ("MISS", "HIT", "redis")
    assert second.body == first.body
    third = generate(b.base_url, {"prompt": "a shared lighthouse", "seed": 1})
    assert third.headers["x-cache-tier"] == "memory", "the redis hit filled the tiers above it"


def test_identical_requests_across_two_replicas_run_the_engine_once(redis_replicas):
    a, b = redis_replicas
    before = engine_calls(a) + engine_calls(b)
    payload = {"prompt": "eight at once", "seed": 8, "num_inference_steps": 4}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: generate((a, b)[i % 2].base_url, payload), range(8)))
    assert [r.status for r in replies] == [200] * 8
    statuses = sorted(r.headers["x-cache"] for r in replies)
    assert statuses.count("MISS") == 1, statuses
    assert len({r.body for r in replies}) == 1
    assert engine_calls(a) + engine_calls(b) - before == 1


def test_replicas_serve_through_a_redis_outage_and_pick_it_up_again(redis_replicas, shared_redis):
    a, b = redis_replicas
    warm = {"prompt": "before the outage", "seed": 2}
    assert generate(a.base_url, warm).status == 200
    shared_redis.stop()
    try:
        for i in range(4):
            for service in (a, b):
                assert generate(service.base_url, {"prompt": f"during the outage {i}", "seed": 3}).status == 200
        assert generate(a.base_url, warm).headers["x-cache-tier"] == "memory"
        for service in (a, b):
            assert service.log().count("cache tier redis is failing") == 1, service.log()
            text = request(service.base_url, "GET", "/metrics").body.decode()
            assert metric(text, "sdxl_cache_tier_up", tier="redis") == 0
            assert metric(text, "sdxl_cache_tier_errors_total", tier="redis") >= 1
    finally:
        shared_redis.start()
    time.sleep(1.2)  # past the pause between probes of a Redis that was down
    after = {"prompt": "after the outage", "seed": 4}
    assert generate(a.base_url, after).headers["x-cache"] == "MISS"
    again = generate(b.base_url, after)
    assert (again.headers["x-cache"], again.headers["x-cache-tier"]) == ("HIT", "redis")
    for service in (a, b):
        assert "cache tier redis works again" in service.log()
        assert metric(request(service.base_url, "GET", "/metrics").body.decode(), "sdxl_cache_tier_up", tier="redis") == 1


def test_a_lease_whose_owner_is_killed_expires_and_another_replica_answers(shared_redis, presets_dir, tmp_path, redis_replicas):
    _, b = redis_replicas
    payload = {"prompt": "an owner that dies", "seed": 5}
    # A long batch window keeps A's request waiting, lease held, long enough to kill it.
    owner = ServiceProcess(replica_args(presets_dir, tmp_path / "owner", shared_redis.url, "--max-batch", "8", "--batch-window-ms", "10000"))
    try:
        owner.wait_ready()
        threading.Thread(target=lambda: _ignore_errors(lambda: generate(owner.base_url, payload)), daemon=True).start()
        leases = shared_redis.client()
        for _ in range(200):
            if list(leases.scan_iter("*:lease")):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the owner never took a lease")
        owner.process.kill()  # SIGKILL: no release, no renewal
        owner.process.wait()
        started = time.monotonic()
        reply = generate(b.base_url, payload)
        took = time.monotonic() - started
    finally:
        owner.stop()
    assert reply.status == 200 and reply.headers["x-cache"] == "MISS"
    assert took < LEASE_MS / 1000 + 3, f"B answered after {took:.1f} s"


def _ignore_errors(call) -> None:  # type: ignore[no-untyped-def]
    try:
        call()
    except OSError:
        pass  # the owner was killed under it: that is the point


# --- the memory tier, in process ------------------------------------------------------------------------


def test_the_memory_tier_holds_at_most_its_size_in_bytes_and_drops_the_least_recently_used():
    tier = MemoryTier(max_bytes=1000)
    for key in "abc":
        tier.set(key, Entry(bytes(400), ()))
    assert tier.bytes <= 1000 and len(tier) == 2 and tier.get("a") is None
    tier.get("b")  # used: now c is the least recently used
    tier.set("d", Entry(bytes(400), ()))
    assert tier.get("b") is not None and tier.get("c") is None
    tier.set("huge", Entry(bytes(1001), ()))
    assert tier.get("huge") is None and tier.bytes <= 1000


async def test_a_memory_hit_never_leaves_the_event_loop(make_client, monkeypatch):
    client = await make_client(ControlledEngine())
    first = await client.post("/generate-image", json={"prompt": "hot", "seed": 6})
    assert first.headers["X-Cache"] == "MISS"
    hops = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(getattr(func, "__qualname__", func))
        return await real_to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting_to_thread)
    hit = await client.post("/generate-image", json={"prompt": "hot", "seed": 6})
    assert (hit.headers["X-Cache"], hit.headers["X-Cache-Tier"]) == ("HIT", "memory")
    assert await hit.read() == await first.read()
    assert hops == [], f"a memory hit went off the loop: {hops}"
