"""Section 4, cache hits: the service answering a repeat, against a bare aiohttp handler with the same bytes.

Both servers run as their own processes on loopback and are driven by the same load generator,
level by level, one after the other; the figure is the ratio (service / bare) of hit latency and of
requests per second. The service does more per hit (validation, the content key, a diskcache read
in a thread, headers, an access log line); the ratio says what that costs.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.http_load import GENERATE_PATH, client_session, drive
from benchmarks.launcher import ServerProcess
from benchmarks.plan import Plan

logger = logging.getLogger(__name__)


def hit_payload(size: int) -> dict[str, Any]:
    return {"prompt": "benchmark cache hit", "seed": 7, "width": size, "height": size}


async def _prime(base_url: str, payload: dict[str, Any]) -> bytes:
    """Make the image once (a miss), and check that asking again is a hit; returns its bytes."""
    async with client_session() as session:
        for _ in range(2):
            async with session.post(base_url + GENERATE_PATH, json=payload) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"the service answered {response.status}: {body[:300]!r}")
                cache = response.headers.get("X-Cache")
    if cache != "HIT":
        raise RuntimeError(f"a repeated request was not a cache hit (X-Cache: {cache})")
    return body


async def _compare(service_url: str, bare_url: str, payload: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    rows = []
    async with client_session() as session:
        for url in (service_url, bare_url):
            await drive(session, url, [payload] * plan.hit_warmup_requests, 1)
        for concurrency in plan.hit_concurrency:
            service = (await drive(session, service_url, [payload] * plan.hit_requests, concurrency)).summary()
            bare = (await drive(session, bare_url, [payload] * plan.hit_requests, concurrency)).summary()
            row: dict[str, Any] = {"concurrency": concurrency, "service": service, "bare_aiohttp": bare}
            if "latency_s" in service and "latency_s" in bare:
                row["p50_ratio"] = service["latency_s"]["p50"] / bare["latency_s"]["p50"]
                row["per_second_ratio"] = service["per_second"] / bare["per_second"]
            rows.append(row)
            logger.info("hits at %d: service/bare p50 %.2fx", concurrency, row.get("p50_ratio", float("nan")))
    return rows


def run_cache_hits(service_url: str, plan: Plan) -> dict[str, Any]:
    payload = hit_payload(plan.size)
    body = asyncio.run(_prime(service_url, payload))
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        body_file = Path(tmp) / "image.png"
        body_file.write_bytes(body)
        with ServerProcess("benchmarks.bare_server", ["--body", str(body_file)]) as bare:
            bare.wait_ready(timeout=60)
            rows = asyncio.run(_compare(service_url, bare.base_url, payload, plan))
    return {"size": plan.size, "image_bytes": len(body), "levels": rows}
