"""Section 1, components: text encoders, one UNet step, VAE decode and image encoding, per backend and precision.

A backend is one entry in `BACKENDS`. The text encoders run in PyTorch for every backend (see
engines/text_encoders.py), so they are timed once per precision; the UNet and the VAE decoder are
timed per backend. A backend whose module is absent, or whose module has no
`build_component_runners` hook yet, is skipped with a note, so new backends plug in here alone.

FLOPs are counted once per component with torch's FlopCounterMode (matrix products, convolutions
and attention; element-wise work is not counted), during the first warm-up run of the PyTorch backend.
The machine's peak is a large matrix product per precision, timed in this process just before and
just after the components, so that both see the same threads and, on a shared machine, about the
same neighbours; each row carries the best of those runs as the peak it is a fraction of.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from benchmarks.machine import matmul_seconds, peak_rates, synchronizer
from benchmarks.plan import Plan
from benchmarks.timing import measure
from engines.core.numerics import TorchNumerics, choose_numerics
from engines.core.pipeline import SDXLTurboPipeline, UNetRunner, VAEDecoderRunner, to_uint8
from engines.core.sdxl import latent_shape, time_ids
from engines.models.components import SDXLComponents
from service.imaging import encode_image

logger = logging.getLogger(__name__)

# What a backend module exposes to be timed here:
#   build_component_runners(components: SDXLComponents, precision: str, work_dir: Path)
#       -> tuple[UNetRunner, VAEDecoderRunner]
# Runners follow engines/core/pipeline.py: float32 torch tensors in and out, numerics cast inside.
HOOK = "build_component_runners"
PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
BENCHMARK_PROMPT = "A cinematic shot a 3 maneki neko in South America."


class BackendSkipped(Exception):
    """A backend cannot be timed here (module absent, no hook, no CUDA); the message says why."""


@dataclass
class LoadedModel:
    """One precision's model in this process: the components and the PyTorch pipeline over them."""

    components: SDXLComponents
    numerics: TorchNumerics
    pipeline: SDXLTurboPipeline
    work_dir: Path


@dataclass(frozen=True)
class Backend:
    name: str
    # Precisions it runs on a device ("cpu", "cuda"); empty: not on this device.
    precisions: Callable[[str], tuple[str, ...]]
    build: Callable[[LoadedModel, str], tuple[UNetRunner, VAEDecoderRunner]]
    module: str | None = None  # must be importable, else the backend is skipped
    # The VAE's precision when the UNet runs in `precision` (the SDXL VAE overflows in fp16).
    vae_precision: Callable[[str, str], str] = lambda precision, device: precision


def _torch_runners(loaded: LoadedModel, precision: str) -> tuple[UNetRunner, VAEDecoderRunner]:
    return loaded.pipeline.unet, loaded.pipeline.vae_decoder


def _torch_vae_precision(precision: str, device: str) -> str:
    return PRECISION_NAMES[choose_numerics(device, precision).vae_dtype]


def _module_runners(module_name: str) -> Callable[[LoadedModel, str], tuple[UNetRunner, VAEDecoderRunner]]:
    def build(loaded: LoadedModel, precision: str) -> tuple[UNetRunner, VAEDecoderRunner]:
        module = importlib.import_module(module_name)
        hook = getattr(module, HOOK, None)
        if hook is None:
            raise BackendSkipped(f"{module_name} has no {HOOK}() hook yet")
        return hook(loaded.components, precision, loaded.work_dir / module_name.rsplit(".", 1)[-1])

    return build


BACKENDS: tuple[Backend, ...] = (
    Backend(
        "torch",
        precisions=lambda device: ("fp32", "fp16") if device == "cuda" else ("fp32", "bf16"),
        build=_torch_runners,
        vae_precision=_torch_vae_precision,
    ),
    Backend(
        "onnxruntime",
        precisions=lambda device: ("fp32",) if device == "cpu" else ("fp16",),
        build=_module_runners("engines.backends.onnxruntime_engine"),
        module="engines.backends.onnxruntime_engine",
    ),
    Backend(
        "openvino",
        precisions=lambda device: ("fp32",) if device == "cpu" else (),
        build=_module_runners("engines.backends.openvino_engine"),
        module="engines.backends.openvino_engine",
    ),
    Backend(
        "tensorrt",
        precisions=lambda device: ("fp16",) if device == "cuda" else (),
        build=_module_runners("engines.backends.tensorrt_engine"),
        module="engines.backends.tensorrt_engine",
        vae_precision=_torch_vae_precision,
    ),
)


def backend_plan(device: str, engine: str, cpu_bf16: bool) -> tuple[dict[str, list[str]], list[str]]:
    """Which backends run in which precision here, and a note for each one skipped.

    `engine` is the --engine flag: "auto" times every backend present; a name times that one alone
    (PyTorch always, as the reference).
    """
    chosen: dict[str, list[str]] = {}
    notes: list[str] = []
    for backend in BACKENDS:
        if engine not in ("auto", "torch") and backend.name not in ("torch", engine):
            continue
        precisions = [p for p in backend.precisions(device) if p != "bf16" or cpu_bf16 or device == "cuda"]
        if not precisions:
            notes.append(f"{backend.name}: skipped, it does not run on {device}")
        elif backend.module and importlib.util.find_spec(backend.module) is None:
            notes.append(f"{backend.name}: skipped, {backend.module} is not in this build")
        else:
            chosen[backend.name] = precisions
    return chosen, notes


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (matmuls, convolutions, attention), counting CPU flash attention too."""
    def cpu_attention(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


@dataclass
class ComponentTimer:
    """Times components in one process; counts each component's FLOPs once (carried between processes)."""

    plan: Plan
    device: torch.device
    flops: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def time(self, component: str, backend: str, precision: str, fn: Callable[[], object]) -> None:
        warmup = self.plan.component_warmup
        if component not in self.flops and backend == "torch":
            with torch.inference_mode():
                self.flops[component] = count_flops(fn)  # the counted run is the first warm-up
            warmup = max(0, warmup - 1)
        with torch.inference_mode():
            stats = measure(fn, warmup, self.plan.component_repeats, synchronizer(self.device))
        self.rows.append(
            {
                "component": component,
                "backend": backend,
                "precision": precision,
                "size": self.plan.size,
                "seconds": stats.as_dict(),
                "flops": self.flops.get(component),
            }
        )
        logger.info("%s %s %s: %.3f s (median)", component, backend, precision, stats.median)


def measure_components(
    loaded: LoadedModel, backends: dict[str, list[str]], plan: Plan, known_flops: dict[str, int], encode_images: bool
) -> dict[str, Any]:
    """Time every component for this process's precision; returns rows, FLOP counts and skip notes."""
    numerics, pipeline = loaded.numerics, loaded.pipeline
    precision = PRECISION_NAMES[numerics.dtype]
    device = numerics.device
    timer = ComponentTimer(plan, device, dict(known_flops))
    notes: list[str] = []
    peak_precisions = list(dict.fromkeys([precision, _torch_vae_precision(precision, device.type)]))
    peak_runs = {p: matmul_seconds(device, p, plan.peak_matmul_size, plan.peak_warmup, plan.peak_repeats)
                 for p in peak_precisions}

    # Inputs: what the loop would hand each component for one request of the plan's size.
    with torch.inference_mode():
        prompt_embeds, pooled = pipeline.text_encoder.encode([BENCHMARK_PROMPT])
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(latent_shape(plan.size, plan.size), generator=generator).to(device)
    timestep = torch.tensor([999.0], device=device)
    conditioning_ids = time_ids(plan.size, plan.size, device=device)
    scaled_latents = latents / pipeline.config.vae_scaling_factor

    pipeline.text_encoder.disable_cache()  # time the encoders, not the service's prompt-embedding cache
    timer.time("text_encoders", "torch", precision, lambda: pipeline.text_encoder.encode([BENCHMARK_PROMPT]))
    for backend in BACKENDS:
        if precision not in backends.get(backend.name, []):
            continue
        try:
            unet, vae_decoder = backend.build(loaded, precision)
        except (BackendSkipped, ImportError) as exc:
            notes.append(f"{backend.name} {precision}: skipped, {exc}")
            continue
        timer.time("unet_step", backend.name, precision, lambda u=unet: u(latents, timestep, prompt_embeds, pooled, conditioning_ids))
        vae_precision = backend.vae_precision(precision, device.type)
        timer.time("vae_decode", backend.name, vae_precision, lambda v=vae_decoder: v(scaled_latents))

    if encode_images:
        with torch.inference_mode():
            pixels = to_uint8((pipeline.vae_decoder(scaled_latents) / 2 + 0.5).clamp(0, 1))[0]
        timer.time("png_encode", "pillow", "uint8", lambda: encode_image(np.ascontiguousarray(pixels), "png"))
    for p in peak_precisions:
        peak_runs[p] += matmul_seconds(device, p, plan.peak_matmul_size, 0, plan.peak_repeats)
    peak = {p: peak_rates(plan.peak_matmul_size, runs) for p, runs in peak_runs.items()}
    for row in timer.rows:
        row["run_precision"] = precision  # the process's precision (a VAE may run in another)
        if row["precision"] in peak:
            row["peak_gflops"] = peak[row["precision"]]["gflops_best"]
    return {"rows": timer.rows, "flops": timer.flops, "peak": peak, "notes": notes}
