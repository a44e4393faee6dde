"""Section `faults`: steady mixed traffic on two replicas sharing one Redis while the faults of a
deployment happen, and what every answer was.

Two tiny-model replicas point at one redis-server started here; replica A's cache directory is a
small tmpfs where mounting one works (root), so its disk can be filled. Workers send a steady mix of
repeats (hits) and new prompts (misses), alternately to each replica, while the schedule runs:
Redis killed, Redis back, A's disk filled to the last byte, freed, and SIGTERM to replica B. As a load
balancer does, a request that cannot connect to B once B is gone goes to A (nothing was sent, so
nothing was lost). Every answer is counted:
- an image: the same bytes as the first answer to the same request, else it is a wrong image;
- 503 or 429 with Retry-After: a refusal the client can act on;
- anything else (a 500, a 503 without Retry-After, a connection reset after the request was sent):
  a failure. The goal is none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp

from benchmarks.launcher import ServiceProcess
from benchmarks.redis_server import RedisServer

GENERATE_PATH = "/generate-image"
WORKERS = 8
HOT_SHARE = 0.75  # of requests repeat one of HOT_PROMPTS (hits); the rest are new (misses)
HOT_PROMPTS = 4
TMPFS_BYTES = 32 * 1024**2
# (seconds after the traffic starts, fault): the schedule both the test and the benchmark run.
SCHEDULE = ((3.0, "redis_down"), (7.0, "redis_up"), (10.0, "disk_full"), (14.0, "disk_freed"), (17.0, "sigterm_b"))
DURATION_S = 22.0


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[bool]:
    """A tmpfs of TMPFS_BYTES at `path` when mount works here (root); True if it is one."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Write a file into `path` until its filesystem is full; returns the file, to delete."""
    filler = path / "filler"
    with open(filler, "wb") as out:
        with contextlib.suppress(OSError):  # ENOSPC: full, as meant
            while True:
                out.write(bytes(1024 * 1024))
                out.flush()
    return filler


class Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.first_image: dict[str, str] = {}  # request -> SHA-256 of its first image

    def image(self, request: str, body: bytes) -> None:
        digest = hashlib.sha256(body).hexdigest()
        if self.first_image.setdefault(request, digest) == digest:
            self.outcomes["image"] += 1
        else:
            self.fail("wrong_image", request)

    def fail(self, kind: str, detail: str) -> None:
        self.outcomes[kind] += 1
        self.failures.append(f"{kind}: {detail}")


async def _post(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], tally: Tally) -> bool:
    """One request and its outcome; False when it could not connect (nothing was sent)."""
    request = f"{payload['prompt']}/{payload['seed']}"
    try:
        async with session.post(url + GENERATE_PATH, json=payload) as reply:
            body = await reply.read()
            if reply.status == 200:
                tally.image(request, body)
            elif reply.status in (429, 503) and reply.headers.get("Retry-After"):
                tally.outcomes[f"refused_{reply.status}"] += 1
            else:
                tally.fail(f"status_{reply.status}", f"{request}: {body[:200]!r}")
    except aiohttp.ClientConnectorError:
        return False
    except (aiohttp.ClientError, OSError) as exc:
        tally.fail("reset", f"{request}: {exc.__class__.__name__}: {exc}")
    return True


async def _traffic(urls: list[str], until: float, tally: Tally, size: int) -> None:
    numbers = itertools.count()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # a connection per request, as from many clients
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker(index: int) -> None:
            for turn in itertools.count():
                if time.monotonic() >= until:
                    return
                n = next(numbers)
                hot = (n % 4) < HOT_SHARE * 4
                prompt = f"fault run, hot {n % HOT_PROMPTS}" if hot else f"fault run, new {n}"
                payload = {"prompt": prompt, "seed": 1, "width": size, "height": size}
                first = urls[(index + turn) % len(urls)]
                if not await _post(session, first, payload, tally):
                    tally.outcomes["rerouted"] += 1  # the replica is gone: the balancer sends it on
                    if not await _post(session, urls[0], payload, tally):
                        tally.fail("no_replica", prompt)

        await asyncio.gather(*(worker(i) for i in range(WORKERS)))


async def _faults(redis_server: RedisServer, disk: Path | None, b: ServiceProcess, started: float, done: list[str]) -> None:
    filler: Path | None = None
    for at, fault in SCHEDULE:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        if fault == "redis_down":
            redis_server.stop()
        elif fault == "redis_up":
            redis_server.start()
        elif fault == "disk_full" and disk is not None:
            filler = await asyncio.to_thread(fill, disk)
        elif fault == "disk_freed" and filler is not None:
            filler.unlink()
        elif fault == "sigterm_b":
            b.process.send_signal(signal.SIGTERM)
        else:
            continue
        done.append(fault)


def run_faults(service_args: Callable[..., list[str]], ready_timeout: float = 180, size: int = 256) -> dict[str, Any]:
    """`service_args(cache_dir, *extra)` gives a replica's flags (its model and the rest). Returns the
    outcome counts, the faults that ran, the failures (at most 20 shown) and the replicas' exit codes."""
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp, RedisServer(Path(tmp)) as redis_server, \
            small_disk(Path(tmp) / "disk-a") as mounted:
        disk = Path(tmp) / "disk-a"
        extra = ("--cache-url", redis_server.url, "--shutdown-timeout", "5", "--max-queue", "8")
        a = ServiceProcess(service_args(disk / "cache", *extra))
        b = ServiceProcess(service_args(Path(tmp) / "cache-b", *extra))
        with a, b:
            a.wait_ready(ready_timeout)
            b.wait_ready(ready_timeout)
            tally, done = Tally(), []

            async def run() -> None:
                started = time.monotonic()
                await asyncio.gather(_traffic([a.base_url, b.base_url], started + DURATION_S, tally, size),
                                     _faults(redis_server, disk if mounted else None, b, started, done))

            asyncio.run(run())
            b_exit = b.process.wait(30)
            a_log = a.log()
    failures = sum(count for kind, count in tally.outcomes.items() if kind not in ("image", "refused_429", "refused_503", "rerouted"))
    return {
        "duration_s": DURATION_S,
        "faults": done,
        "disk": "tmpfs" if mounted else "not filled (mount is not allowed here)",
        "outcomes": dict(tally.outcomes),
        "failures": failures,
        "failure_examples": tally.failures[:20],
        "distinct_requests": len(tally.first_image),
        "replica_b_exit": b_exit,
        "replica_a_disk_write_failures_logged": "image cache write failed" in a_log,
    }
