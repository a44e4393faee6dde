"""Giving resident memory back: the pages of weight files a process maps, and the C heap's free space.

OpenVINO maps an IR's model.bin (or a compiled-model cache blob), and at the first inference its
CPU plugin repacks every weight into memory of its own, keeping the mapping: each weight would sit
in memory twice, once as fp16 in the file's pages and once in the precision it computes in. Those
pages are clean copies of a read-only file, so this process may drop them at any time
(madvise MADV_DONTNEED): a page touched again is read back from the page cache or the disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import resource
import threading
from pathlib import Path
from typing import Iterator

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def mapped_resident(directory: Path) -> dict[str, int]:
    """{file under `directory` this process maps: its resident bytes}, from /proc/self/smaps."""
    prefix, found, current = str(directory.resolve()) + "/", {}, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split(maxsplit=5)
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
                current = fields[5].rstrip("\n") if len(fields) == 6 and fields[5].startswith(prefix) else None
                if current is not None:
                    found.setdefault(current, 0)
            elif current is not None and fields[0] == "Rss:":
                found[current] += int(fields[1]) * 1024
    return found


def release_mapped_pages(directory: Path) -> None:
    """Drop this process's resident pages of every read-only mapping of a file under `directory`."""
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            # Never a writable mapping: dropping its dirty pages would lose what was written.
            if len(fields) == 6 and "w" not in fields[1] and fields[5].rstrip("\n").startswith(prefix):
                start, end = (int(address, 16) for address in fields[0].split("-"))
                if _libc.madvise(start, end - start, mmap.MADV_DONTNEED) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"madvise: {os.strerror(error)}", fields[5].strip())


@contextlib.contextmanager
def releasing_mapped_pages(directory: Path, every_s: float = 0.25) -> Iterator[None]:
    """Release the mapped pages under `directory` every `every_s` while the block runs, and once after.

    A first inference reads every weight once to repack it: released as it goes, the two copies
    are never resident together, which keeps the peak (VmHWM) down, not only the steady state.
    """
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every_s):
            release_mapped_pages(directory)

    thread = threading.Thread(target=loop, name="release-mapped-pages", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        release_mapped_pages(directory)


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc keeps them for reuse otherwise):
    after a 5 GB torch module is freed, before the next big allocation."""
    trim = getattr(_libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (ru_maxrss: Linux's VmHWM)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
