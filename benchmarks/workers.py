"""The work of one precision's process: load the model once, then run the sections that need it.

The baseline runs first, on the freshly loaded modules (our runners move nothing on the CPU, but on
CUDA they move the VAE); then the PyTorch components; then the compiled components, which release
the torch weights before they load their own. The scale table runs elsewhere, on the service's own
engine (benchmarks/scale.py).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.baseline import measure_baseline
from benchmarks.components import ComponentsSection, LoadedModel
from benchmarks.isolation import configure_child_logging, own_peak_rss_bytes
from benchmarks.machine import load_average
from benchmarks.plan import Plan
from engines.core.hardware import usable_cpu_count
from engines.backends.torch_runners import build_torch_pipeline
from engines.core.numerics import choose_numerics
from engines.models.sources import load_components

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionJob:
    model: str
    precision: str
    device: str
    plan: Plan
    work_dir: Path
    engine_dir: Path | None = None  # a build whose files the compiled components are timed on
    presets_dir: Path | None = None
    backends: dict[str, list[str]] = field(default_factory=dict)
    known: dict[str, dict[str, Any]] = field(default_factory=dict)  # FLOP and byte counts of earlier processes
    baseline: bool = False
    components: bool = False
    encode_images: bool = False
    log_level: str = "INFO"


def run_precision_job(job: PrecisionJob) -> dict[str, Any]:
    """Load `job.model` in `job.precision` and run the sections asked for; a failing section is recorded, not raised."""
    configure_child_logging(job.log_level)
    numerics = choose_numerics(job.device, job.precision)
    if numerics.device.type == "cpu":
        torch.set_num_threads(usable_cpu_count())
    start = time.perf_counter()
    components = load_components(job.model, numerics.dtype, job.presets_dir)
    result: dict[str, Any] = {
        "precision": job.precision,
        "numerics": numerics.name(),
        "model_fingerprint": components.fingerprint,
        "load_seconds": time.perf_counter() - start,
        "errors": {},
    }
    logger.info("loaded %s in %s in %.1f s", job.model, numerics.name(), result["load_seconds"])

    def section(name: str, run: Callable[[], Any]) -> Any:
        """run()'s value, or None with the failure recorded: one failing section must not cost the others."""
        try:
            return run()
        except Exception as exc:
            logger.exception("section %s failed", name)
            result["errors"][name] = f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            return None

    if job.baseline:
        result["baseline"] = section("baseline", lambda: measure_baseline(components, numerics.device, job.plan))
    pipeline = build_torch_pipeline(components, numerics)
    loaded = LoadedModel(job.model, components, numerics, pipeline, job.work_dir, job.engine_dir)
    if job.components:
        timed = section("components", lambda: ComponentsSection(loaded, job.backends, job.plan, job.known, job.encode_images).time_torch())
        if timed is not None:
            result["components"] = section("components", timed.finish)
    result["peak_rss_bytes"] = own_peak_rss_bytes()
    result["load_average_at_end"] = load_average()
    return {name: value for name, value in result.items() if value is not None}
