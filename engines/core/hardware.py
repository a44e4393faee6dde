"""Facts about the machine that decide numerics and threads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


# ONEDNN_MAX_CPU_ISA caps the instructions oneDNN's kernels use (OpenVINO's CPU plugin and torch's
# convolutions); OpenVINO's own kernels read OV_CPU_MAX_ISA. Set to the same value, they make this
# processor behave like an older one (AVX2 only, say), and the flags below drop what the cap forbids
# so the numerics chosen from them (bf16 or not) match the kernels that run.
ISA_CAP_VARIABLE = "ONEDNN_MAX_CPU_ISA"
ISA_CAPS: dict[str, tuple[str, ...]] = {  # the cap -> flag prefixes it forbids
    "AVX2": ("avx512", "amx", "avx_vnni"),
    "AVX2_VNNI": ("avx512", "amx"),
    "AVX512_CORE": ("avx512_bf16", "avx512_vnni", "avx512_fp16", "amx", "avx_vnni"),
    "AVX512_CORE_VNNI": ("avx512_bf16", "avx512_fp16", "amx"),
    "AVX512_CORE_BF16": ("avx512_fp16", "amx"),
}


def isa_cap() -> str | None:
    """The ISA cap this process runs under (upper case), None when it runs with everything it has."""
    value = os.environ.get(ISA_CAP_VARIABLE, "").strip().upper()
    return value if value in ISA_CAPS else None


def cpu_flags() -> set[str]:
    """The processor's feature flags (Linux /proc/cpuinfo) less any an ISA cap forbids; empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            cap = isa_cap()
            return flags if cap is None else {f for f in flags if not f.startswith(ISA_CAPS[cap])}
    return set()


def cpu_features() -> dict[str, object]:
    """What a CPU build records: the features that decide OpenVINO's numerics and kernels."""
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "bf16", "asimd")
    return {"bf16": cpu_has_bf16(), "flags": sorted(f for f in wanted if f in flags), "cores": usable_cpu_count(),
            "isa_cap": isa_cap()}


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic: AVX-512 BF16 or AMX on x86, the BF16 extension on Arm."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def usable_cpu_count() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota if one is set."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


@dataclass(frozen=True)
class GpuInfo:
    """What a TensorRT plan is tied to: the GPU model and its compute capability."""

    name: str
    compute_capability: str  # "8.9"

    def describe(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability})"


def cuda_gpu() -> GpuInfo | None:
    """The first CUDA GPU torch sees, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}")
