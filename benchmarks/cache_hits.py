"""Section 4, cache hits: each cache tier answering a repeat, against a bare aiohttp handler with the same bytes.

Each row is a service process set up so that its hits can come from one tier only:
- memory: the service the HTTP section ran, with its default flags;
- disk: `--memory-cache-size 0` over that service's cache directory (the image is already on disk);
- redis: `--memory-cache-size 0`, `--cache-url` to a redis-server started here, and a `--cache-dir`
  that cannot be created, so the disk tier is bypassed: the Redis read alone, as the rows above
  measure their tier alone;
- redis, refilling disk: the same with a working disk tier that keeps nothing (`--cache-size 1`:
  diskcache culls each entry as soon as it is written), so every hit also writes the image to disk
  before it is answered, as a replica's first hit of an image another replica made does (plus the
  cull, which a real refill does not pay).
The X-Cache-Tier of every answer is counted: hits that came from another tier than the row's are
reported as such, with no figure under the row's name.

Per row, the bare server is started with the bytes that row answers, and at each concurrency
level both are driven by the same load generator, in alternating slices. The figures are the ratios
(service / bare) of requests per second and of p50 latency, checked against issue 24's goals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

from benchmarks.http_load import GENERATE_PATH, Level, client_session, drive
from benchmarks.launcher import ServerProcess, running_service
from benchmarks.plan import Plan
from benchmarks.redis_server import RedisServer

logger = logging.getLogger(__name__)
ServiceArgs = Callable[..., list[str]]  # (cache directory, *extra flags) -> the service's flags
# Each level alternates service and bare in this many slices, so that a burst of other work on the
# machine falls on both alike.
SLICES = 4

# Issue 24's goals (and issue 14's Redis bound). Each holds at every concurrency level, so the worst level decides.
MEMORY_PER_SECOND = 0.9  # memory-tier hits/s over the bare handler's, at least
MEMORY_P50 = 1.15  # memory-tier p50 over the bare handler's, at most
DISK_PER_SECOND = 0.6  # disk-tier hits/s over the bare handler's, at least
REDIS_OVER_DISK_P50_S = 0.001  # Redis-tier p50 minus disk-tier p50, at most
REFILL_PER_SECOND = 0.9  # Redis hits refilling the disk tier, hits/s over Redis alone, at least


def hit_payload(size: int) -> dict[str, Any]:
    return {"prompt": "benchmark cache hit", "seed": 7, "width": size, "height": size}


async def _prime(base_url: str, payload: dict[str, Any], tier: str) -> bytes:
    """Ask twice (the first may make the image) and check the second answer is a hit from `tier`; returns its bytes."""
    async with client_session() as session:
        for _ in range(2):
            async with session.post(base_url + GENERATE_PATH, json=payload) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"the service answered {response.status}: {body[:300]!r}")
                cache, answered_by = response.headers.get("X-Cache"), response.headers.get("X-Cache-Tier")
    if (cache, answered_by) != ("HIT", tier):
        raise RuntimeError(f"a repeated request was not a {tier}-tier hit (X-Cache: {cache}, X-Cache-Tier: {answered_by})")
    return body


def wrong_answers(service: dict[str, Any], tier: str) -> str | None:
    """Why a level's answers are not all hits from `tier`, in words; None when they are."""
    expected = {"HIT": service["requests"]}, {tier: service["requests"]}
    if (service["x_cache"], service["x_cache_tier"]) == expected:
        return None
    return f"expected {service['requests']} {tier}-tier hits, got X-Cache {service['x_cache']}, X-Cache-Tier {service['x_cache_tier']}"


async def _compare(service_url: str, bare_url: str, payload: dict[str, Any], name: str, tier: str, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    async with client_session() as session:
        for url in (service_url, bare_url):
            await drive(session, url, [payload] * plan.hit_warmup_requests, 1)
        for concurrency in plan.hit_concurrency:
            runs: dict[str, list[Level]] = {service_url: [], bare_url: []}
            for _ in range(SLICES):
                for url, levels in runs.items():
                    levels.append(await drive(session, url, [payload] * (plan.hit_requests // SLICES), concurrency))
            service, bare = (Level.merged(runs[url]).summary() for url in (service_url, bare_url))
            row: dict[str, Any] = {"concurrency": concurrency, "service": service, "bare_aiohttp": bare}
            wrong = wrong_answers(service, tier)
            if wrong:
                row["wrong_answers"] = wrong
                logger.error("%s hits at %d: %s", name, concurrency, wrong)
            elif "latency_s" in bare:
                row["p50_ratio"] = service["latency_s"]["p50"] / bare["latency_s"]["p50"]
                row["per_second_ratio"] = service["per_second"] / bare["per_second"]
                logger.info("%s hits at %d: service/bare req/s %.2f, p50 %.2fx", name, concurrency, row["per_second_ratio"], row["p50_ratio"])
            rows.append(row)
    return rows


def run_tier(name: str, tier: str, service_url: str, plan: Plan) -> dict[str, Any]:
    """Hits of the service at `service_url`, which must all come from `tier`, against the bare
    handler answering the same bytes; `name` labels the row."""
    payload = hit_payload(plan.size)
    body = asyncio.run(_prime(service_url, payload, tier))
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        body_file = Path(tmp) / "image.png"
        body_file.write_bytes(body)
        with ServerProcess("benchmarks.bare_server", ["--body", str(body_file)]) as bare:
            bare.wait_ready(timeout=60)
            rows = asyncio.run(_compare(service_url, bare.base_url, payload, name, tier, plan))
    return {"name": name, "tier": tier, "image_bytes": len(body), "levels": rows}


def measure_memory_tier(service_url: str, plan: Plan) -> dict[str, Any]:
    return _measured("memory", "memory", lambda: run_tier("memory", "memory", service_url, plan))


def run_lower_tiers(service_args: ServiceArgs, cache_dir: Path, plan: Plan) -> list[dict[str, Any]]:
    """The disk and Redis rows, each a service process of its own (one at a time: one model in memory)."""
    disk_args = service_args(cache_dir, "--memory-cache-size", "0")
    rows = [_measured("disk", "disk", functools.partial(_run_in_process, "disk", "disk", disk_args, plan))]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp, RedisServer(Path(tmp)) as redis_server:
            not_a_directory = Path(tmp) / "not-a-directory"
            not_a_directory.touch()
            redis_args = ("--memory-cache-size", "0", "--cache-url", redis_server.url)
            # The first primes Redis with the image; the second finds it there.
            for name, args in (
                ("redis", service_args(not_a_directory / "cache", *redis_args)),
                ("redis, refilling disk", service_args(Path(tmp) / "cache", "--cache-size", "1", *redis_args)),
            ):
                rows.append(_measured(name, "redis", functools.partial(_run_in_process, name, "redis", args, plan)))
    except Exception as exc:  # no redis-server, or it did not start
        logger.exception("the Redis tier could not be measured")
        rows += [{"name": name, "tier": "redis", "error": f"{exc.__class__.__name__}: {exc}"}
                 for name in ("redis", "redis, refilling disk") if name not in {r["name"] for r in rows}]
    return rows


def _run_in_process(name: str, tier: str, args: list[str], plan: Plan) -> dict[str, Any]:
    with running_service(args, plan.service_ready_timeout_s) as service:
        return {**run_tier(name, tier, service.base_url, plan), "service_args": args}


def _measured(name: str, tier: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The row's figures, or what stopped them (the other rows are measured all the same)."""
    try:
        return run()
    except Exception as exc:
        logger.exception("%s hits could not be measured", name)
        return {"name": name, "tier": tier, "error": f"{exc.__class__.__name__}: {exc}"}


# --- against the goals ---------------------------------------------------------------------------------


def goals(tiers: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Issue 24's goals, each judged on its worst concurrency level; `met` is None where a tier was not
    measured at every level (an error, or hits from another tier)."""
    complete: dict[str, list[dict[str, Any]]] = {}  # by row name
    for t in tiers:
        found = {level["concurrency"]: level for level in t.get("levels", []) if "p50_ratio" in level}
        if all(c in found for c in plan.hit_concurrency):
            complete[t["name"]] = [found[c] for c in plan.hit_concurrency]

    def figures(name: str, figure: str) -> list[float] | None:
        return [level[figure] for level in complete[name]] if name in complete else None

    def p50(level: dict[str, Any]) -> float:
        return level["service"]["latency_s"]["p50"]

    redis_over_disk = None
    if "disk" in complete and "redis" in complete:
        redis_over_disk = [p50(redis) - p50(disk) for redis, disk in zip(complete["redis"], complete["disk"])]
    refill_over_redis = None
    if "redis" in complete and "redis, refilling disk" in complete:
        refill_over_redis = [refill["service"]["per_second"] / redis["service"]["per_second"]
                             for refill, redis in zip(complete["redis, refilling disk"], complete["redis"])]
    rows = [
        ("memory-tier hits/s / bare", "at least", MEMORY_PER_SECOND, "ratio", figures("memory", "per_second_ratio")),
        ("memory-tier p50 / bare", "at most", MEMORY_P50, "ratio", figures("memory", "p50_ratio")),
        ("disk-tier hits/s / bare", "at least", DISK_PER_SECOND, "ratio", figures("disk", "per_second_ratio")),
        ("Redis-tier p50 - disk-tier p50", "at most", REDIS_OVER_DISK_P50_S, "s", redis_over_disk),
        ("Redis hits refilling disk, hits/s / Redis alone", "at least", REFILL_PER_SECOND, "ratio", refill_over_redis),
    ]
    out = []
    for figure, kind, bound, unit, values in rows:
        worst = None if values is None else (min(values) if kind == "at least" else max(values))
        met = None if worst is None else (worst >= bound if kind == "at least" else worst <= bound)
        out.append({"figure": figure, "kind": kind, "bound": bound, "unit": unit, "worst": worst, "met": met})
    return out
