"""The ceilings a component is read against, measured in the same process as the components.

Compute: the best of several matrix-product implementations (torch's, and OpenVINO's own kernels
compiled as a one-layer model) at a few sizes, since no single library reaches the processor's peak
everywhere (on AVX2, torch's fp32 matmul is slower than OpenVINO's). Timed before and after the
components: a machine whose probes disagree was not quiet, and the report says so.
Memory: the bandwidth of a large copy, so a component's bytes give a time floor of their own.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.machine import synchronizer
from benchmarks.timing import Stats, measure
from engines.core.hardware import usable_cpu_count

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # the CPU plugin's names; it has no fp16 compute on x86
DRIFT_LIMIT = 0.15  # probes before and after further apart than this: the machine changed under the run


def torch_matmul(device: torch.device, precision: str, size: int) -> Callable[[], object]:
    generator = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, DTYPES[precision])
    b = torch.randn(size, size, generator=generator).to(device, DTYPES[precision])

    def run() -> object:
        with torch.inference_mode():
            return torch.mm(a, b)

    return run


def openvino_matmul(precision: str, size: int) -> Callable[[], object]:
    """A one-MatMul OpenVINO model (a constant weight, as in a real layer), compiled like the engine's."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([size, size], ov.Type.f32, name="x")
    weight = ops.constant(rng.standard_normal((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(x, weight, False, False)], [x], "matmul_probe")
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": usable_cpu_count()}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    feed = rng.standard_normal((size, size), dtype=np.float32)
    return lambda: request.infer([feed])


def implementations(device: torch.device, precision: str) -> dict[str, Callable[[int], Callable[[], object]]]:
    """Every matmul this run can time in `precision` on `device`."""
    found: dict[str, Callable[[int], Callable[[], object]]] = {"torch": lambda n: torch_matmul(device, precision, n)}
    if device.type == "cpu" and precision in OPENVINO_HINTS:
        try:
            import openvino  # noqa: F401
        except ImportError:
            pass
        else:
            found["openvino"] = lambda n: openvino_matmul(precision, n)
    return found


def probe(device: torch.device, precision: str, sizes: tuple[int, ...], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per n x n x n product, per "implementation@n", one per timed repeat."""
    runs: dict[str, list[float]] = {}
    for name, make in implementations(device, precision).items():
        for size in sizes:
            fn = make(size)
            runs[f"{name}@{size}"] = list(measure(fn, warmup, repeats, synchronizer(device)).runs)
            del fn
    return runs


def gflops(key: str, seconds: float) -> float:
    size = int(key.rsplit("@", 1)[1])
    return 2 * size**3 / seconds / 1e9


def summarize_peak(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, Any]:
    """The ceiling a component divides by (the best single run of any probe), each probe's rates,
    and how far the best probe before the components and the best after disagree."""
    probes = []
    for key in before:
        runs = before[key] + after.get(key, [])
        stats = Stats.of(runs)
        implementation, size = key.rsplit("@", 1)
        probes.append({
            "implementation": implementation, "matmul_size": int(size), "seconds": stats.as_dict(),
            "gflops": gflops(key, stats.median), "gflops_min": gflops(key, stats.max), "gflops_best": gflops(key, stats.min),
            "gflops_before": gflops(key, min(before[key])),
            "gflops_after": gflops(key, min(after[key])) if after.get(key) else None,
        })
    best = max(probes, key=lambda p: p["gflops_best"])
    best_before = max(p["gflops_before"] for p in probes)
    best_after = max((p["gflops_after"] for p in probes if p["gflops_after"]), default=None)
    drift = None if best_after is None else abs(best_after / best_before - 1)
    return {
        # The best run is the ceiling: a busy machine only ever slows a run down.
        "gflops_best": best["gflops_best"],
        "gflops": best["gflops"],
        "gflops_min": best["gflops_min"],
        "matmul_size": best["matmul_size"],
        "implementation": best["implementation"],
        "seconds": best["seconds"],
        "probes": probes,
        "gflops_before": best_before,
        "gflops_after": best_after,
        "drift": drift,
        "drifted": drift is not None and drift > DRIFT_LIMIT,
    }


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> dict[str, Any]:
    """Bytes per second a large copy moves (each byte read once and written once), best of runs:
    torch's copy runs on every thread, as a component's kernels do."""
    elements = megabytes * 2**20 // 4
    source = torch.ones(elements)
    target = torch.empty_like(source)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        target.copy_(source)
        seconds.append(time.perf_counter() - start)
    best = min(seconds[1:])  # the first touches fresh pages
    moved = 2 * source.numel() * source.element_size()
    return {"bytes_per_second": moved / best, "bytes": moved, "seconds": Stats.of(seconds[1:]).as_dict()}
