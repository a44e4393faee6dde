"""The machine a run measured: processor, cores, memory, GPU, library versions; and its measured peak.

The peak is a large square matrix product per precision, timed in the same run: every component's
achieved GFLOP/s is read as a fraction of it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.timing import Stats, measure
from engines.core.files import package_version
from engines.core.hardware import cpu_flags, cpu_has_bf16, usable_cpu_count

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Flags that decide how fast dense arithmetic can go; the full list is long and says little more.
SIMD_FLAG = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512.*|amx.*|avx_vnni|neon|asimd.*|sve.*|bf16|i8mm)$")
LIBRARIES = (
    "torch", "diffusers", "transformers", "numpy", "pillow", "aiohttp", "diskcache",
    "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "matplotlib",
)


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def library_versions() -> dict[str, str | None]:
    return {name: package_version(name) for name in LIBRARIES}


def gpu_facts() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_bytes": props.total_memory,
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
    }


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages: the machine may be shared, and a report should say how busy it was."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_simd_flags": sorted(f for f in cpu_flags() if SIMD_FLAG.match(f)),
        "cpu_has_bf16": cpu_has_bf16(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": memory_bytes(),
        "gpu": gpu_facts(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": library_versions(),
        "load_average_at_start": load_average(),
    }


def machine_label(facts: dict[str, Any]) -> str:
    """A short file-name-safe name: the GPU's name where there is one, else the CPU's and its cores."""
    if facts.get("gpu"):
        name = facts["gpu"]["name"]
    else:
        name = f"{facts['cpu_model']}-{facts['usable_cpus']}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def device_precisions(device: torch.device) -> list[str]:
    """The precisions worth measuring here: fp32 always; bf16 on CPUs that have it natively; fp16 and bf16 on CUDA."""
    if device.type == "cuda":
        return ["fp32", "fp16", "bf16"]
    return ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call before reading a clock: CUDA runs asynchronously, the CPU does not."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def matmul_seconds(device: torch.device, precision: str, size: int, warmup: int, repeats: int) -> list[float]:
    """Seconds per n x n x n matrix product in `precision`, one per timed repeat."""
    generator = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, DTYPES[precision])
    b = torch.randn(size, size, generator=generator).to(device, DTYPES[precision])
    with torch.inference_mode():
        return list(measure(lambda: torch.mm(a, b), warmup, repeats, synchronizer(device)).runs)


def peak_rates(size: int, seconds: list[float]) -> dict[str, Any]:
    """GFLOP/s of the matmul runs: median, min and max; the max (`gflops_best`) is the ceiling that
    fractions of peak divide by, since a busy machine only ever slows a run down."""
    flops = 2 * size**3
    stats = Stats.of(seconds)
    return {
        "matmul_size": size,
        "seconds": stats.as_dict(),
        "gflops": flops / stats.median / 1e9,
        "gflops_min": flops / stats.max / 1e9,
        "gflops_best": flops / stats.min / 1e9,
    }
