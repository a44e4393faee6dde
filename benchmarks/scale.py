"""Section 5, scale: how the cost of one image grows with steps (1, 2, 4) and with size (512 to 1024).

End-to-end images (text encoders, UNet steps, VAE decode) in process, made by the engine the service
serves with: built from the service's own arguments by the service's own code (Settings, then
engines.select), loaded and warmed up as the service does before /readyz, in a spawned process of
its own so that its weights never sit beside another process's. Its 1-step image at the base size
is the report's "ours in process": the engine of "ours over HTTP", without the HTTP. The note says
where growth stops being linear: per step at the base size, and per pixel across sizes (attention
costs grow with the square of the latent tokens).
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from benchmarks.isolation import configure_child_logging, own_peak_rss_bytes
from benchmarks.machine import load_average
from benchmarks.plan import Plan
from benchmarks.timing import measure
from engines.base import GenerationRequest, ImageEngine
from engines.select import prepare_and_select
from service.settings import load_settings

logger = logging.getLogger(__name__)
LINEAR_TOLERANCE = 0.10  # within 10% of the straight line counts as linear


def cells(plan: Plan) -> list[tuple[int, int]]:
    """(steps, size): every step count at the base size, every size at one step."""
    wanted = [(steps, plan.size) for steps in plan.scale_steps] + [(1, size) for size in plan.scale_sizes]
    return list(dict.fromkeys(wanted))


def measure_served_scale(service_args: list[str], plan: Plan, log_level: str) -> dict[str, Any]:
    """The scale table on the engine `python -m service SERVICE_ARGS` would serve with; run it in a
    process of its own (benchmarks/isolation.py). Returns the table, the engine's name and why it was
    chosen, and the process's facts under "process"."""
    configure_child_logging(log_level)
    started = time.perf_counter()
    engine = prepare_and_select(load_settings(service_args).engine_request())
    try:
        engine.load()
        engine.warm_up()  # the service's warm-up image and self-test: the state /readyz answers in
        ready_s = time.perf_counter() - started
        logger.info("scale: %s loaded and warmed up in %.1f s", engine.info.name, ready_s)
        table = measure_scale(engine, plan)
    finally:
        engine.close()
    process = {
        "sections": ["scale"],
        "numerics": engine.info.name,
        "model_fingerprint": engine.info.model_fingerprint,
        "load_seconds": ready_s,
        "peak_rss_bytes": own_peak_rss_bytes(),
        "load_average_at_end": load_average(),
    }
    return {"engine": engine.info.name, "engine_reason": engine.info.selection_reason, **table, "process": process}


def measure_scale(engine: ImageEngine, plan: Plan) -> dict[str, Any]:
    """Time each cell the engine can run; a size's first cell gets one untimed warm-up image first if the plan says so."""
    counter = itertools.count()
    rows, skipped, warm_sizes = [], [], set()
    for steps, size in cells(plan):
        if not engine.limits.supports(size, size):
            skipped.append({"steps": steps, "size": size, "skipped": f"{engine.info.name} runs {engine.limits.describe_sizes()}"})
            continue

        def one_image(steps: int = steps, size: int = size) -> None:
            i = next(counter)  # a new prompt each time: no prompt-embedding cache hit, as on a service miss
            engine.generate([GenerationRequest(prompt=f"scale {i}", seed=i, num_inference_steps=steps, width=size, height=size)])

        warmup = 1 if plan.scale_warm_new_sizes and size not in warm_sizes else 0
        stats = measure(one_image, warmup, plan.scale_repeats)  # generate returns finished images: nothing to wait for
        warm_sizes.add(size)
        rows.append({"steps": steps, "size": size, "seconds": stats.as_dict()})
        logger.info("scale: %d steps at %dx%d on %s: %.3f s (median)", steps, size, size, engine.info.name, stats.median)
    skipped += [{"steps": 1, "size": size, "skipped": "left out of this plan for time"} for size in plan.scale_skipped_sizes]
    return {"rows": rows, "skipped": skipped, "notes": linearity_notes(rows, plan.size)}


def linearity_notes(rows: list[dict[str, Any]], base_size: int) -> list[str]:
    """Where cost stops growing in a straight line with steps, and with pixels."""
    median = {(r["steps"], r["size"]): r["seconds"]["median"] for r in rows}
    notes = []
    steps = sorted(s for s, size in median if size == base_size)
    if len(steps) >= 3:
        # The straight line through the two smallest step counts: fixed cost plus cost per step.
        s0, s1 = steps[0], steps[1]
        per_step = (median[(s1, base_size)] - median[(s0, base_size)]) / (s1 - s0)
        fixed = median[(s0, base_size)] - per_step * s0
        if per_step <= 0:
            notes.append(f"steps: {s1} steps cost no more than {s0} here; the run was too noisy to fit a line")
            steps = []
        for s in steps[2:]:
            predicted = fixed + per_step * s
            deviation = median[(s, base_size)] / predicted - 1
            verdict = "linear" if abs(deviation) <= LINEAR_TOLERANCE else "not linear"
            notes.append(
                f"steps: {s} steps take {median[(s, base_size)]:.3g} s against {predicted:.3g} s on the line "
                f"fixed {fixed:.3g} s + {per_step:.3g} s per step ({deviation:+.0%}): {verdict}"
            )
    sizes = sorted(size for s, size in median if s == 1)
    if len(sizes) >= 2 and (1, base_size) in median:
        base = median[(1, base_size)]
        for size in sizes:
            if size == base_size:
                continue
            pixels = (size / base_size) ** 2
            growth = median[(1, size)] / base
            per_pixel = growth / pixels - 1
            verdict = "linear in pixels" if abs(per_pixel) <= LINEAR_TOLERANCE else (
                "worse than linear in pixels" if per_pixel > 0 else "better than linear in pixels"
            )
            notes.append(
                f"size: {size}x{size} has {pixels:.2f}x the pixels of {base_size}x{base_size} and costs "
                f"{growth:.2f}x ({per_pixel:+.0%} per pixel): {verdict}"
            )
    return notes
