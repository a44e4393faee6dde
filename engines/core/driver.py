"""Is the NVIDIA driver new enough for the GPU environment's CUDA 13? Standard library only (no torch),
so it can run before any GPU package is installed: `python -m engines.core.driver` prints one line
and exits 1 when the driver is too old; it prints nothing and exits 0 when the driver is fine or
there is no NVIDIA driver at all (a CPU machine is not a problem here).

Without this, torch on a too-old driver says only that no CUDA GPU is visible.
"""

from __future__ import annotations

import re
import subprocess
import sys

# CUDA 13.x on Linux needs driver 580 or newer ("CUDA 13.x >= 580"):
# https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html
# torch 2.13.0, tensorrt-cu13 and onnxruntime-gpu in constraints/gpu.txt are all CUDA 13 builds.
MIN_DRIVER = 580
CUDA_MAJOR = 13

QUERY = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
_ASK = object()  # driver_problem()'s default: ask nvidia-smi


def nvidia_driver_version(timeout: float = 10.0) -> str | None:
    """The driver version nvidia-smi reports ("580.65.06"), or None without nvidia-smi or when it fails."""
    try:
        result = subprocess.run(QUERY, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        return None
    return lines[0]  # one line per GPU; one driver serves them all


def driver_problem(version: str | None | object = _ASK) -> str | None:
    """One line naming the driver found and the one needed when it is too old for CUDA 13; None when it
    is new enough, when there is no NVIDIA driver (version None), or when the version cannot be read."""
    if version is _ASK:
        version = nvidia_driver_version()
    if not isinstance(version, str):
        return None
    match = re.match(r"\s*(\d+)", version)
    if match is None:
        return None
    if int(match.group(1)) >= MIN_DRIVER:
        return None
    return (
        f"NVIDIA driver {version.strip()} is too old: the GPU environment is built for CUDA {CUDA_MAJOR} "
        f"(torch, TensorRT, ONNX Runtime), which needs driver {MIN_DRIVER} or newer"
    )


def main() -> int:
    problem = driver_problem()
    if problem is None:
        return 0
    print(problem, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
