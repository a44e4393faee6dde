"""Section 5, two replicas: identical cache misses spread over two service processes sharing one Redis.

Two service processes, each with its own fresh disk tier, point at one redis-server started here.
For each of a few new prompts, `replica_copies` identical requests are sent at once, alternately to
one replica and the other. The engines' own counters in /metrics, read before and after
(`sdxl_batch_size_count`: engine calls; `sdxl_batch_size_sum`: images made), say how often the model
ran: issue 14's goal is exactly one image per unique request. The answers' X-Cache (MISS, SHARED,
REMOTE, HIT) say how the other copies were served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from benchmarks.http_load import Level, client_session, drive, scrape
from benchmarks.launcher import running_service
from benchmarks.plan import Plan
from benchmarks.redis_server import RedisServer

logger = logging.getLogger(__name__)
REPLICAS = 2
ENGINE_LINE = re.compile(r"^sdxl_batch_size_(count|sum) ([0-9.e+-]+)$", re.M)


def engine_work(base_url: str) -> dict[str, float]:
    """{"calls": engine calls, "images": images made} so far, from the service's /metrics."""
    found = {kind: float(value) for kind, value in ENGINE_LINE.findall(scrape(base_url))}
    if set(found) != {"count", "sum"}:
        raise RuntimeError(f"no sdxl_batch_size count and sum in {base_url}/metrics")
    return {"calls": found["count"], "images": found["sum"]}


def replica_payloads(plan: Plan) -> list[list[dict[str, Any]]]:
    """Per replica, its share of `replica_copies` copies of each of `replica_prompts` new requests."""
    shares: list[list[dict[str, Any]]] = [[] for _ in range(REPLICAS)]
    for i in range(plan.replica_prompts):
        payload = {"prompt": f"benchmark two replicas, request {i}", "seed": i, "width": plan.size, "height": plan.size}
        for copy in range(plan.replica_copies):
            shares[copy % REPLICAS].append(payload)
    return shares


async def _send_all_at_once(urls: list[str], shares: list[list[dict[str, Any]]]) -> list[Level]:
    async with client_session() as session:
        return list(await asyncio.gather(*(drive(session, url, share, len(share)) for url, share in zip(urls, shares))))


def run_replicas(service_args: Callable[..., list[str]], plan: Plan) -> dict[str, Any]:
    """`service_args(cache_dir, *extra)` gives a replica's flags; both replicas run at once."""
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp, RedisServer(Path(tmp)) as redis_server, \
            contextlib.ExitStack() as stack:
        args = [service_args(Path(tmp) / f"cache-{i}", "--cache-url", redis_server.url) for i in range(REPLICAS)]
        services = [stack.enter_context(running_service(a, plan.service_ready_timeout_s)) for a in args]
        urls = [service.base_url for service in services]
        before = [engine_work(url) for url in urls]
        levels = asyncio.run(_send_all_at_once(urls, replica_payloads(plan)))
        after = [engine_work(url) for url in urls]
    per_replica = [
        {"requests": level.summary()["requests"], "x_cache": level.summary()["x_cache"],
         "statuses": level.summary()["statuses"], **{k: a[k] - b[k] for k in ("calls", "images")}}
        for level, b, a in zip(levels, before, after)
    ]
    calls, images = (sum(r[k] for r in per_replica) for k in ("calls", "images"))
    x_cache: Counter[str] = Counter()
    for replica in per_replica:
        x_cache.update(replica["x_cache"])
    ok = sum(replica["statuses"].get(200, 0) for replica in per_replica)
    result = {
        "replicas": REPLICAS,
        "model": args[0][args[0].index("--model") + 1],
        "unique_requests": plan.replica_prompts,
        "requests": plan.replica_prompts * plan.replica_copies,
        "ok": ok,
        "x_cache": dict(x_cache),
        "engine_calls": calls,
        "images_made": images,
        "engine_calls_per_unique_request": calls / plan.replica_prompts,
        "images_per_unique_request": images / plan.replica_prompts,
        "per_replica": per_replica,
        "service_args": args,
    }
    result["met"] = ok == result["requests"] and result["images_per_unique_request"] == 1.0
    logger.info("two replicas: %d engine calls, %d images for %d unique requests (%s)",
                calls, images, plan.replica_prompts, dict(x_cache))
    return result
