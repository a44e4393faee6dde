"""Section 1, components: text encoders, one UNet step, VAE decode and image encoding, per backend and precision.

A backend is one entry in `BACKENDS`. The text encoders run in PyTorch for every backend (see
engines/text_encoders.py), so they are timed once per precision; the UNet and the VAE decoder are
timed per backend, each compiled backend with the runner class its engine serves with, made by
benchmarks/engine_runners.py (the build code converts; runtime code may not import it). A backend
whose module is absent, or with no hook there, is skipped with a note.

FLOPs and bytes are counted once per component during the first warm-up run of the PyTorch backend:
FLOPs with torch's FlopCounterMode (matrix products, convolutions and attention; element-wise work
is not counted), bytes as every leaf module's weights plus its output written and read once. Two
floors follow: FLOPs over the measured matmul peak (benchmarks/peak.py, probed before and after the
components in this process), and bytes over the measured copy bandwidth.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from benchmarks.machine import nominal_peak, synchronizer
from benchmarks.peak import copy_bandwidth, probe, summarize_peak
from benchmarks.plan import Plan
from benchmarks.timing import measure
from engines.core.hardware import usable_cpu_count
from engines.core.numerics import TorchNumerics, choose_numerics
from engines.core.pipeline import SDXLTurboPipeline, UNetRunner, VAEDecoderRunner, to_uint8
from engines.core.sdxl import latent_shape, time_ids
from engines.models.components import SDXLComponents
from service.imaging import encode_image

logger = logging.getLogger(__name__)

# Where a compiled backend's runners come from:
#   benchmarks.engine_runners.build_component_runners(backend, components, precision, work_dir)
#       -> tuple[UNetRunner, VAEDecoderRunner]
# Runners follow engines/core/pipeline.py: float32 torch tensors in and out, numerics cast inside.
HOOKS_MODULE = "benchmarks.engine_runners"
PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
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
    module: str | None = None  # its library: must be importable, else the backend is skipped
    # The VAE's precision when the UNet runs in `precision` (the SDXL VAE overflows in fp16).
    vae_precision: Callable[[str, str], str] = lambda precision, device: precision


def _torch_runners(loaded: LoadedModel, precision: str) -> tuple[UNetRunner, VAEDecoderRunner]:
    return loaded.pipeline.unet, loaded.pipeline.vae_decoder


def _torch_vae_precision(precision: str, device: str) -> str:
    return PRECISION_NAMES[choose_numerics(device, precision).vae_dtype]


def _module_runners(backend: str) -> Callable[[LoadedModel, str], tuple[UNetRunner, VAEDecoderRunner]]:
    def build(loaded: LoadedModel, precision: str) -> tuple[UNetRunner, VAEDecoderRunner]:
        from benchmarks.engine_runners import HOOKS

        if backend not in HOOKS:
            raise BackendSkipped(f"{HOOKS_MODULE} has no build_component_runners() hook for {backend} yet")
        return HOOKS[backend](loaded.components, precision, loaded.work_dir / backend)

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
        build=_module_runners("onnxruntime"),
        module="onnxruntime",
    ),
    Backend(
        "openvino",
        precisions=lambda device: ("fp32", "bf16") if device == "cpu" else (),
        build=_module_runners("openvino"),
        module="openvino",
    ),
    Backend(
        "tensorrt",
        precisions=lambda device: ("fp16",) if device == "cuda" else (),
        build=_module_runners("tensorrt"),
        module="tensorrt",
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


def count_traffic(fn: Callable[[], object]) -> dict[str, int]:
    """Elements one call must move at the least: every leaf module's weights (each module once) and
    every leaf module's outputs (written once, read once by the next layer)."""
    seen: set[int] = set()
    counts = {"weight_elements": 0, "activation_elements": 0}

    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if next(module.children(), None) is not None:
            return  # containers: their leaves are counted
        if id(module) not in seen:
            seen.add(id(module))
            counts["weight_elements"] += sum(p.numel() for p in module.parameters(recurse=False))
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        counts["activation_elements"] += sum(o.numel() for o in outputs if isinstance(o, torch.Tensor))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return counts


def traffic_bytes(traffic: dict[str, int] | None, precision: str) -> int | None:
    """Bytes a component moves in `precision`: weights read once, activations written and read once."""
    if not traffic or precision not in BYTES_PER_ELEMENT:
        return None
    return BYTES_PER_ELEMENT[precision] * (traffic["weight_elements"] + 2 * traffic["activation_elements"])


@dataclass
class ComponentTimer:
    """Times components in one process; counts each component's FLOPs and bytes once (carried between processes)."""

    plan: Plan
    device: torch.device
    flops: dict[str, int] = field(default_factory=dict)
    traffic: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def time(self, component: str, backend: str, precision: str, fn: Callable[[], object]) -> None:
        warmup = self.plan.component_warmup
        if component not in self.flops and backend == "torch":
            with torch.inference_mode():
                self.flops[component] = count_flops(fn)  # the counted runs are the first warm-ups
                self.traffic[component] = count_traffic(fn)
            warmup = max(0, warmup - 2)
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
                "bytes": traffic_bytes(self.traffic.get(component), precision),
            }
        )
        logger.info("%s %s %s: %.3f s (median)", component, backend, precision, stats.median)


def measure_components(
    loaded: LoadedModel, backends: dict[str, list[str]], plan: Plan, known: dict[str, Any], encode_images: bool
) -> dict[str, Any]:
    """Time every component for this process's precision; returns rows, FLOP and byte counts, the
    peaks and bandwidth they are read against, and skip notes. `known`: counts from earlier processes."""
    numerics, pipeline = loaded.numerics, loaded.pipeline
    precision = PRECISION_NAMES[numerics.dtype]
    device = numerics.device
    timer = ComponentTimer(plan, device, dict(known.get("flops", {})), dict(known.get("traffic", {})))
    notes: list[str] = []
    peak_precisions = list(dict.fromkeys([precision, _torch_vae_precision(precision, device.type)]))
    probes_before = {p: probe(device, p, plan.peak_sizes, plan.peak_warmup, plan.peak_repeats) for p in peak_precisions}
    bandwidth = copy_bandwidth(plan.bandwidth_megabytes) if device.type == "cpu" else None

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
    peak = {}
    for p in peak_precisions:
        peak[p] = summarize_peak(probes_before[p], probe(device, p, plan.peak_sizes, 0, plan.peak_repeats))
        if device.type == "cpu":
            peak[p]["nominal"] = nominal_peak(p, usable_cpu_count())
    for row in timer.rows:
        row["run_precision"] = precision  # the process's precision (a VAE may run in another)
        if row["precision"] in peak:
            row["peak_gflops"] = peak[row["precision"]]["gflops_best"]
        if bandwidth and row.get("bytes"):
            row["bandwidth_bytes_per_second"] = bandwidth["bytes_per_second"]
    return {"rows": timer.rows, "flops": timer.flops, "traffic": timer.traffic, "peak": peak,
            "bandwidth": bandwidth, "notes": notes}
