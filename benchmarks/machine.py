"""The machine a run measured: processor, cores, memory, GPU, library versions, and its nominal peak
(what the data sheet promises; the measured one is in peak.py)."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from engines.core.files import package_version
from engines.core.hardware import cpu_flags, cpu_has_bf16, isa_cap, usable_cpu_count

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
        "isa_cap": isa_cap(),
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


# Vendor marks and filler that make a processor's name long without telling processors apart.
NAME_NOISE = re.compile(r"\((r|tm)\)|\b(processor|cpu|\d+-core|with radeon graphics)\b|@.*$", re.IGNORECASE)


def machine_label(facts: dict[str, Any]) -> str:
    """A short file-name-safe name ("intel-xeon-2c"): the GPU's name where there is one, else the
    CPU's, without trade marks and filler, and its cores (and the ISA cap it ran under)."""
    if facts.get("gpu"):
        name = facts["gpu"]["name"]
    else:
        name = f"{NAME_NOISE.sub(' ', facts['cpu_model'])}-{facts['usable_cpus']}c"
        if facts.get("isa_cap"):
            name += f"-{facts['isa_cap']}-cap"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cpu_clock_hz() -> tuple[float | None, str]:
    """The processor's clock and where it was read: the highest frequency sysfs states, else the
    "cpu MHz" of /proc/cpuinfo (in a VM often the base clock); (None, why) when neither says."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz * 1e3, "sysfs cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) * 1e6, "/proc/cpuinfo cpu MHz (the current clock; turbo may go higher)"
    except (OSError, ValueError):
        pass
    return None, "unknown: neither sysfs cpufreq nor /proc/cpuinfo gives a clock"


def flops_per_cycle(flags: set[str], precision: str) -> tuple[int, str]:
    """FLOP per cycle per core of the widest units the flags name, assuming two FMA ports (the
    nominal best case: some parts have one 512-bit unit, which halves it)."""
    if precision == "bf16" and "amx_bf16" in flags:
        return 1024, "AMX-BF16 tile multiply (1024 FLOP/cycle)"
    if precision == "int8" and "amx_int8" in flags:
        return 2048, "AMX-INT8 tile multiply (2048 OP/cycle)"
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags or "avx" in flags else 4
    width = {16: "AVX-512", 8: "AVX2", 4: "SSE"}[lanes]
    fma = 2 if "fma" in flags or lanes == 16 else 1
    per_lane = {"bf16": 2 if "avx512_bf16" in flags else 1, "int8": 4 if flags & {"avx512_vnni", "avx_vnni"} else 1}.get(precision, 1)
    per_cycle = 2 * fma * lanes * per_lane  # 2 ports x (multiply + add) x lanes x pairs per lane
    unit = " FMA" if per_lane == 1 else {"bf16": " BF16 dot products", "int8": " VNNI"}[precision]
    return per_cycle, f"{width}{unit}, 2 ports ({per_cycle} FLOP/cycle)"


def nominal_peak(precision: str, cores: int) -> dict[str, Any]:
    """cores x FLOP per cycle x clock: what the processor's data sheet would promise, beside the measured peak."""
    per_cycle, units = flops_per_cycle(cpu_flags(), precision)
    clock, source = cpu_clock_hz()
    gflops = None if clock is None else cores * per_cycle * clock / 1e9
    return {"gflops": gflops, "cores": cores, "flops_per_cycle": per_cycle, "units": units,
            "clock_ghz": None if clock is None else clock / 1e9, "clock_source": source}


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
