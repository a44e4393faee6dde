"""Section 2, baseline: the original service's approach, timed on the same weights in the same run.

A plain diffusers `StableDiffusionXLPipeline` built from the same components, float32 on a CPU
(float16 on a GPU), called once per request, with no cache and no compilation; each answer is
saved as a PNG with Pillow's defaults, as the original service did.
"""

from __future__ import annotations

import io
import itertools
import logging
from typing import Any

import torch

from benchmarks.machine import synchronizer
from benchmarks.plan import Plan
from benchmarks.timing import measure
from engines.core.pipeline import make_scheduler
from engines.models.components import SDXLComponents

logger = logging.getLogger(__name__)


def baseline_precision(device: torch.device) -> str:
    return "fp16" if device.type == "cuda" else "fp32"


def build_baseline_pipeline(components: SDXLComponents, device: torch.device) -> Any:
    """diffusers' own SDXL pipeline over the very modules our engine runs (no copy of the weights)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer,
        tokenizer_2=components.tokenizer_2,
        unet=components.unet,
        scheduler=make_scheduler(components.scheduler_config),
        force_zeros_for_empty_prompt=components.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def measure_baseline(components: SDXLComponents, device: torch.device, plan: Plan) -> dict[str, Any]:
    """Seconds per request (prompt in, PNG bytes out), a new prompt and seed each time."""
    pipe = build_baseline_pipeline(components, device)
    counter = itertools.count()

    def one_request() -> bytes:
        i = next(counter)
        image = pipe(
            prompt=f"baseline request {i}",
            num_inference_steps=1,
            guidance_scale=0.0,
            width=plan.size,
            height=plan.size,
            generator=torch.Generator(device).manual_seed(i),
        ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    with torch.inference_mode():
        stats = measure(one_request, plan.baseline_warmup, plan.baseline_repeats, synchronizer(device))
    logger.info("baseline: %.3f s per image (median)", stats.median)
    return {
        "name": "baseline: diffusers StableDiffusionXLPipeline",
        "what": "diffusers StableDiffusionXLPipeline, one call per request, PNG via Pillow defaults; no cache, no compile",
        "precision": baseline_precision(device),
        "device": device.type,
        "size": plan.size,
        "num_inference_steps": 1,
        "seconds": stats.as_dict(),
    }
