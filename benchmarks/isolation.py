"""Run one section in a fresh process, so that two models are never in memory at once.

Each precision's model lives in its own spawned process and is gone, memory and all, when the
process ends; a section killed for memory fails alone instead of ending the run.
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


def run_isolated(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a spawned child process; its exceptions are raised here."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def own_peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def configure_child_logging(level: str) -> None:
    """A spawned process starts with no logging: the suite's format, and no progress bars in the log."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
