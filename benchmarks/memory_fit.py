"""Whether a step of the components section fits in memory, judged before it runs, and giving freed memory back.

An OOM kill ends the whole precision process and loses every figure it had measured, so a step that
would not fit is skipped with a note that says what it needs and what the machine has. Needs are
estimated from a component's weight count (benchmarks/engine_runners.py holds the bytes per weight)
plus HEADROOM_BYTES; what the machine has is MemAvailable from /proc/meminfo, read just before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path

# Activations at 512x512 (the VAE decoder's largest reach a few hundred MB in fp32) and the
# runtime's own buffers, beside the weights.
HEADROOM_BYTES = 2 * 2**30


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable: what can be allocated without swapping (None where the kernel does not say)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def shortfall(what: str, need_bytes: int, available: int | None) -> str | None:
    """None when `need_bytes` plus the headroom fits in `available` (or nothing is known); else why not."""
    if available is None or need_bytes + HEADROOM_BYTES <= available:
        return None
    return (
        f"{what} needs about {need_bytes / 1e9:.1f} GB (+{HEADROOM_BYTES / 1e9:.1f} GB headroom) "
        f"and this machine has {available / 1e9:.1f} GB available (MemAvailable)"
    )


def give_back() -> None:
    """Collect dropped objects and hand glibc's freed heap pages back to the kernel: without the trim, a
    released 10 GB UNet stays in this process's resident memory and MemAvailable never sees it freed."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)
