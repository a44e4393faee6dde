"""Section 3, end to end over HTTP: a load generator on loopback against the running service.

Cache misses (every request new) at each concurrency level, image-to-image misses at concurrency 1
(strength 0.5 and 2 steps, SDXL Turbo's own example: one UNet step, like the text-to-image row,
plus the VAE encoder), then a mix with a given share of
repeats (cache hits). Each level reports latency p50/p95/p99 (send to last byte), images per second
(answers over the level's wall time) and the X-Cache answers seen. The service's own start-up
makes a warm-up image before /readyz answers 200, so no extra warm-up is sent for misses.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import logging
import random
import re
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.plan import Plan
from benchmarks.timing import percentiles

logger = logging.getLogger(__name__)
GENERATE_PATH = "/generate-image"


@dataclass(frozen=True)
class Outcome:
    seconds: float
    status: int
    cache: str
    tier: str  # X-Cache-Tier: the tier a HIT came from ("" otherwise)
    nbytes: int


@dataclass
class Level:
    concurrency: int
    outcomes: list[Outcome]
    wall_seconds: float

    @classmethod
    def merged(cls, levels: list[Level]) -> Level:
        """Several runs at one concurrency as one: their answers together, their wall times added."""
        return cls(levels[0].concurrency, [o for level in levels for o in level.outcomes], sum(level.wall_seconds for level in levels))

    def summary(self) -> dict[str, Any]:
        ok = [o for o in self.outcomes if o.status == 200]
        latencies = [o.seconds for o in ok]
        summary: dict[str, Any] = {
            "concurrency": self.concurrency,
            "requests": len(self.outcomes),
            "ok": len(ok),
            "statuses": dict(Counter(o.status for o in self.outcomes)),
            "x_cache": dict(Counter(o.cache for o in ok)),
            "x_cache_tier": dict(Counter(o.tier for o in ok if o.tier)),
            "wall_seconds": self.wall_seconds,
            "per_second": len(ok) / self.wall_seconds if self.wall_seconds > 0 else None,
        }
        if latencies:
            summary["latency_s"] = {**percentiles(latencies), "min": min(latencies), "max": max(latencies)}
        return summary


async def drive(session: aiohttp.ClientSession, base_url: str, payloads: list[dict[str, Any]], concurrency: int) -> Level:
    """Send `payloads` with `concurrency` clients, each sending its next request when its last one is answered."""
    queue = list(reversed(payloads))
    outcomes: list[Outcome] = []

    async def client() -> None:
        while queue:
            payload = queue.pop()
            start = time.perf_counter()
            async with session.post(base_url + GENERATE_PATH, json=payload) as response:
                body = await response.read()
            headers = response.headers
            outcomes.append(Outcome(time.perf_counter() - start, response.status, headers.get("X-Cache", ""),
                                    headers.get("X-Cache-Tier", ""), len(body)))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Level(concurrency, outcomes, time.perf_counter() - start)


def client_session() -> aiohttp.ClientSession:
    # No client-side timeout: a slow CPU image is a figure to record, not an error.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), connector=aiohttp.TCPConnector(limit=0))


@dataclass
class Payloads:
    """New requests (misses: a prompt never sent before), and repeats of those already answered (hits)."""

    size: int
    tag: str = field(default_factory=lambda: f"{time.time_ns():x}")
    sent: list[dict[str, Any]] = field(default_factory=list)
    _numbers: itertools.count = field(default_factory=itertools.count)

    def fresh(self, count: int) -> list[dict[str, Any]]:
        new = []
        for _ in range(count):
            i = next(self._numbers)
            new.append({"prompt": f"benchmark {self.tag} request {i}", "seed": i, "width": self.size, "height": self.size})
        self.sent.extend(new)
        return new

    def image_to_image(self, count: int) -> list[dict[str, Any]]:
        """New image-to-image requests: one noise picture of the run's size, a new prompt each."""
        import numpy as np
        from PIL import Image

        png = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)).save(png, "PNG")
        image = base64.b64encode(png.getvalue()).decode()
        return [
            {"prompt": f"benchmark {self.tag} image-to-image {i}", "seed": i, "image": image, "strength": 0.5,
             "num_inference_steps": 2}
            for i in range(count)
        ]

    def repeats(self, count: int) -> list[dict[str, Any]]:
        if not self.sent:
            raise ValueError("repeats: nothing has been sent yet")
        return list(itertools.islice(itertools.cycle(self.sent), count))


STAGE_LINE = re.compile(r'^sdxl_stage_seconds_(sum|count)\{stage="([a-z_]+)"\} ([0-9.e+-]+)$', re.M)


def scrape(base_url: str) -> str:
    """The service's /metrics, as Prometheus text."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        return response.read().decode()


def served_stage_means(base_url: str) -> dict[str, float]:
    """Mean seconds per stage (text encoders, UNet, VAE, encoding, queue wait, request) as the service
    measured them while it served the run: the components of whatever backend it runs."""
    text = scrape(base_url)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for kind, stage, value in STAGE_LINE.findall(text):
        (sums if kind == "sum" else counts)[stage] = float(value)
    return {stage: sums[stage] / counts[stage] for stage in sums if counts.get(stage)}


def run_http(base_url: str, plan: Plan) -> dict[str, Any]:
    return asyncio.run(_run_http(base_url, plan))


def run_misses(base_url: str, plan: Plan, concurrency: int = 1) -> dict[str, Any]:
    """Cache misses alone at one concurrency: another engine's figure beside the HTTP section's."""

    async def misses() -> dict[str, Any]:
        async with client_session() as session:
            count = max(plan.miss_min_requests, concurrency * plan.miss_requests_per_client)
            return (await drive(session, base_url, Payloads(plan.size).fresh(count), concurrency)).summary()

    return asyncio.run(misses())


async def _run_http(base_url: str, plan: Plan) -> dict[str, Any]:
    payloads = Payloads(plan.size)
    async with client_session() as session:
        misses = []
        for concurrency in plan.miss_concurrency:
            count = max(plan.miss_min_requests, concurrency * plan.miss_requests_per_client)
            level = await drive(session, base_url, payloads.fresh(count), concurrency)
            misses.append(level.summary())
            logger.info("misses at %d: %s", concurrency, misses[-1].get("latency_s"))
        image_to_image = await drive(session, base_url, payloads.image_to_image(plan.miss_min_requests), 1)
        logger.info("image-to-image misses at 1: %s", image_to_image.summary().get("latency_s"))
        mixed = []
        hits = round(plan.mixed_requests * plan.mixed_hit_share)
        for concurrency in plan.mixed_concurrency:
            batch = payloads.repeats(hits) + payloads.fresh(plan.mixed_requests - hits)
            random.Random(concurrency).shuffle(batch)
            level = await drive(session, base_url, batch, concurrency)
            mixed.append(level.summary())
            logger.info("mixed at %d: %s", concurrency, mixed[-1].get("latency_s"))
    return {"size": plan.size, "misses": misses, "image_to_image": [image_to_image.summary()], "mixed": mixed,
            "mixed_hit_share": plan.mixed_hit_share}
