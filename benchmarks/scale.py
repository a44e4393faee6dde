"""Section 5, scale: how the cost of one image grows with steps (1, 2, 4) and with size (512 to 1024).

End-to-end images through our loop (text encoders, UNet steps, VAE decode), in the service's
precision, in process. The note says where growth stops being linear: per step at the base size, and
per pixel across sizes (attention costs grow with the square of the latent tokens).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch

from benchmarks.machine import synchronizer
from benchmarks.plan import Plan
from benchmarks.timing import measure
from engines.base import GenerationRequest
from engines.core.pipeline import SDXLTurboPipeline

logger = logging.getLogger(__name__)
LINEAR_TOLERANCE = 0.10  # within 10% of the straight line counts as linear


def cells(plan: Plan) -> list[tuple[int, int]]:
    """(steps, size): every step count at the base size, every size at one step."""
    wanted = [(steps, plan.size) for steps in plan.scale_steps] + [(1, size) for size in plan.scale_sizes]
    return list(dict.fromkeys(wanted))


def measure_scale(pipeline: SDXLTurboPipeline, plan: Plan, warm_sizes: set[int]) -> dict[str, Any]:
    """Time each cell; a size not yet run in this process gets one untimed warm-up image first if the plan says so."""
    device = pipeline.device
    counter = itertools.count()
    rows = []
    for steps, size in cells(plan):
        def one_image(steps: int = steps, size: int = size) -> None:
            i = next(counter)
            request = GenerationRequest(prompt=f"scale {i}", seed=i, num_inference_steps=steps, width=size, height=size)
            with torch.inference_mode():
                pipeline([request])

        warmup = 1 if plan.scale_warm_new_sizes and size not in warm_sizes else 0
        stats = measure(one_image, warmup, plan.scale_repeats, synchronizer(device))
        warm_sizes.add(size)
        rows.append({"steps": steps, "size": size, "seconds": stats.as_dict()})
        logger.info("scale: %d steps at %dx%d: %.3f s (median)", steps, size, size, stats.median)
    skipped = [{"steps": 1, "size": size, "skipped": "left out of this plan for time"} for size in plan.scale_skipped_sizes]
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
