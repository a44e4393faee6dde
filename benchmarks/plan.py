"""How much to measure: repeat counts and sweeps, chosen per mode so a run fits its time budget.

`QUICK` runs every section on the tiny model in a few minutes, most of them the peers' export and
processes (a test runs it). `CPU_FULL` fits the full SDXL architecture on a 2-core CPU into 30 minutes, `make bench`'s tiny-VAE run
included, on the slowest processor here (AVX2 only, everything in fp32): few repeats, the miss
sweep cut to concurrency 1 and 2 (the CPU engine makes one image at a time, so latency at
concurrency c is about c times that at 1 and throughput stays flat), and the scale table cut to
512 and 768 pixels, one run per cell. Estimated from earlier runs' figures (an estimate, not yet a
measured run): on that processor the suite takes about 26 minutes (scale 4 when it ran on torch,
plus about 1 for its own process to load the service's engine and make its warm-up image, compiled
components 5, torch components 3, the service over HTTP 5, baseline 2, the cache tiers' three more
service processes about 3, the two-replica run on the tiny model 1) and the tiny-VAE run 3; two
scale runs per cell would add 4. With AVX-512 BF16 about 19 minutes in all, the peers aside (their
export once, then one process per peer). `GPU_FULL` measures everything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Plan:
    name: str
    size: int = 512  # width and height of every image outside the scale table
    # The service's precision (and the scale table's); "auto" is the service's own choice, and
    # components are then timed in every precision the machine has. Another value times that one alone.
    precision: str = "auto"
    # Machine peak: square matmuls of these sizes per precision and implementation (benchmarks/peak.py).
    peak_sizes: tuple[int, ...] = (1024, 2048, 4096)
    peak_warmup: int = 1
    peak_repeats: int = 5
    bandwidth_megabytes: int = 512  # the copy that measures memory bandwidth: well past every cache
    # Components: the first warm-up run also counts the FLOPs.
    component_warmup: int = 1
    component_repeats: int = 3
    # Baseline: a plain diffusers pipeline, one request per call.
    baseline_warmup: int = 1
    baseline_repeats: int = 2
    # Peers (benchmarks/peers.py): one untimed image (the weight check's) per peer, then these.
    peer_warmup: int = 1
    peer_repeats: int = 3
    # HTTP: cache misses per concurrency level: `miss_requests_per_client * concurrency`, at least `miss_min_requests`.
    miss_concurrency: tuple[int, ...] = (1, 2, 4, 8)
    miss_requests_per_client: int = 2
    miss_min_requests: int = 2
    # A mix of repeats (cache hits) and new requests at each of these levels.
    mixed_concurrency: tuple[int, ...] = (1, 2, 4, 8)
    mixed_requests: int = 16
    mixed_hit_share: float = 0.75
    # Pure hits, against a bare aiohttp handler returning the same bytes.
    hit_concurrency: tuple[int, ...] = (1, 2, 4, 8)
    hit_requests: int = 200
    hit_warmup_requests: int = 20
    # Two replicas sharing Redis: this many copies of each of `replica_prompts` new requests, sent at
    # once, alternately to each; `replica_model` is their model when not the run's.
    replica_prompts: int = 3
    replica_copies: int = 8
    replica_model: str | None = None
    # Scale: end-to-end images over steps (at `size`) and sizes (at 1 step), on the service's engine in process.
    scale_steps: tuple[int, ...] = (1, 2, 4)
    scale_sizes: tuple[int, ...] = (512, 768, 1024)
    scale_skipped_sizes: tuple[int, ...] = ()
    scale_repeats: int = 3
    scale_warm_new_sizes: bool = True  # one untimed image at each size's first cell (besides the engine's warm-up image)
    service_ready_timeout_s: float = 900.0
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK = Plan(
    name="quick",
    size=256,
    precision="fp32",  # the tiny model's small layers run many times slower in bf16 than in fp32 here
    peak_sizes=(256, 1024),
    peak_repeats=3,
    bandwidth_megabytes=128,
    miss_requests_per_client=1,
    mixed_requests=8,
    hit_requests=100,
    hit_warmup_requests=10,
    scale_sizes=(256, 384),
    scale_repeats=2,
    peer_repeats=2,
    notes=("quick: the tiny model at 256x256 in fp32, whose figures say nothing about speed; it keeps the suite from rotting",),
)

CPU_FULL = Plan(
    name="cpu-full",
    peak_repeats=3,
    miss_concurrency=(1, 2),
    miss_requests_per_client=1,
    mixed_concurrency=(4,),
    mixed_requests=8,
    hit_requests=400,  # hits cost milliseconds: enough of them that one stall of a busy machine does not decide a ratio
    scale_sizes=(512, 768),
    scale_skipped_sizes=(1024,),
    scale_repeats=1,
    scale_warm_new_sizes=False,
    replica_model="tiny",
    notes=(
        "cache misses at concurrency 1 and 2 only: the CPU engine makes one image at a time, so latency "
        "at concurrency c is about c times that at 1 and throughput stays flat (4 and 8 would add ~6 minutes)",
        "scale: one run per cell (a second adds about 4 minutes on an AVX2-only processor, past the 30 the "
        "whole run may take); 768x768 gets no warm-up run (on an AVX-512 CPU a first torch decode at a new "
        "size cost the same as the next; not yet measured on OpenVINO), so a first-call cost there would be "
        "in its figure; 1024x1024 is left out (about 4 minutes of its own)",
        "two replicas: on the tiny model (torch, fp32), since the suite keeps one full-size model in memory at a "
        "time (two would need up to 25 GiB here); the figure is a count of engine calls per unique request",
    ),
)

GPU_FULL = Plan(name="gpu-full", baseline_repeats=3, miss_requests_per_client=4)


def plan_for(quick: bool, device: str) -> Plan:
    if quick:
        return QUICK
    return GPU_FULL if device == "cuda" else CPU_FULL
