"""Section 1, components: text encoders, one UNet step, VAE decode and image encoding, per backend and precision.

A backend is one entry in `BACKENDS`. The text encoders run in PyTorch for every backend (see
engines/text_encoders.py), so they are timed once per precision; the UNet and the VAE decoder are
timed per backend, each compiled backend on the files and with the runner class its engine serves
with (benchmarks/engine_runners.py: the build's files from --engine-dir, else made in this run). A
backend whose module is absent, or with no hook there, is skipped with a note.

Memory: at full size a compiled runtime's copy of the UNet does not fit beside torch's, so a process
times in two halves. `time_torch` times PyTorch; `finish` finds or makes every compiled backend's
files while the torch modules are there, releases the torch weights, then times the compiled
backends one component at a time, each runner freed before the next one loads. A step that would
not fit in MemAvailable is skipped with a note that gives the need and what the machine has
(benchmarks/memory_fit.py): an OOM kill would lose the process's every figure.

FLOPs and bytes are counted once per component during the first warm-up run of the PyTorch backend:
FLOPs with torch's FlopCounterMode (matrix products, convolutions and attention; element-wise work
is not counted), bytes as every leaf module's weights plus its output written and read once. Two
floors follow: FLOPs over the measured matmul peak (benchmarks/peak.py, probed before and after the
components in this process), and bytes over the measured copy bandwidth.
"""

from __future__ import annotations

import importlib.util
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from benchmarks.engine_runners import HOOKS, CompiledBackend, ComponentFiles, build_files, made_files
from benchmarks.machine import nominal_peak, synchronizer
from benchmarks.memory_fit import available_bytes, give_back, shortfall
from benchmarks.peak import copy_bandwidth, probe, summarize_peak
from benchmarks.plan import Plan
from benchmarks.timing import measure
from engines.core.hardware import usable_cpu_count
from engines.core.numerics import TorchNumerics, choose_numerics
from engines.core.pipeline import SDXLTurboPipeline, to_uint8
from engines.core.sdxl import latent_shape, time_ids
from engines.core.specs import UNET, VAE_DECODER
from engines.manifest import ManifestError
from engines.models.components import SDXLComponents
from service.imaging import encode_image

logger = logging.getLogger(__name__)

PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
BENCHMARK_PROMPT = "A cinematic shot a 3 maneki neko in South America."
ROW_NAMES = {UNET: "unet_step", VAE_DECODER: "vae_decode"}  # a spec's name -> its rows' component


class BackendSkipped(Exception):
    """A backend cannot be timed here (module absent, no hook); the message says why."""


@dataclass
class LoadedModel:
    """One precision's model in this process: the components, the PyTorch pipeline over them, and
    where compiled backends' files are found (`engine_dir`, a build) or made (`work_dir`)."""

    model: str
    components: SDXLComponents
    numerics: TorchNumerics
    pipeline: SDXLTurboPipeline
    work_dir: Path
    engine_dir: Path | None = None


@dataclass(frozen=True)
class Backend:
    name: str
    # Precisions it runs on a device ("cpu", "cuda"); empty: not on this device.
    precisions: Callable[[str], tuple[str, ...]]
    module: str | None = None  # its library: must be importable, else the backend is skipped
    # The VAE's precision when the UNet runs in `precision` (the SDXL VAE overflows in fp16).
    vae_precision: Callable[[str, str], str] = lambda precision, device: precision


def _torch_vae_precision(precision: str, device: str) -> str:
    return PRECISION_NAMES[choose_numerics(device, precision).vae_dtype]


BACKENDS: tuple[Backend, ...] = (
    Backend(
        "torch",
        precisions=lambda device: ("fp32", "fp16") if device == "cuda" else ("fp32", "bf16"),
        vae_precision=_torch_vae_precision,
    ),
    Backend("onnxruntime", precisions=lambda device: ("fp32",) if device == "cpu" else ("fp16",), module="onnxruntime"),
    Backend("openvino", precisions=lambda device: ("fp32", "bf16") if device == "cpu" else (), module="openvino"),
    Backend(
        "tensorrt",
        precisions=lambda device: ("fp16",) if device == "cuda" else (),
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

    def time(
        self, component: str, backend: str, precision: str, runner: str, fn: Callable[[], object],
        files: dict[str, str | None] | None = None,
    ) -> None:
        """One row: `runner` names the class timed, `files` the file it runs (path, and manifest key for a build's)."""
        warmup = self.plan.component_warmup
        if component not in self.flops and backend == "torch":
            with torch.inference_mode():
                self.flops[component] = count_flops(fn)  # the counted runs are the first warm-ups
                self.traffic[component] = count_traffic(fn)
            warmup = max(0, warmup - 2)
        with torch.inference_mode():
            stats = measure(fn, warmup, self.plan.component_repeats, synchronizer(self.device))
        row = {
            "component": component,
            "backend": backend,
            "precision": precision,
            "runner": runner,
            "size": self.plan.size,
            "seconds": stats.as_dict(),
            "flops": self.flops.get(component),
            "bytes": traffic_bytes(self.traffic.get(component), precision),
        }
        if files is not None:
            row["files"] = files
        self.rows.append(row)
        logger.info("%s %s %s: %.3f s (median)", component, backend, precision, stats.median)


def compiled_hook(backend: str, precision: str) -> CompiledBackend:
    """The hook that times `backend` in `precision`; BackendSkipped, saying why, where there is none."""
    hook = HOOKS.get(backend)
    if hook is None:
        raise BackendSkipped(f"benchmarks.engine_runners has no hook for {backend} yet")
    if precision not in hook.load_bytes_per_weight:  # ONNX Runtime on CUDA: the hook runs the CPU's fp32 graphs
        raise BackendSkipped(f"benchmarks.engine_runners times it in {', '.join(hook.load_bytes_per_weight)} only, not {precision}")
    return hook


def release(*modules: torch.nn.Module | None) -> None:
    """Free modules' weights in place, whoever still refers to them (the components, the pipeline's
    runners): their tensors move to the meta device, which holds no memory."""
    for module in modules:
        if module is not None:
            module.to("meta")
    give_back()


def weight_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class ComponentsSection:
    """One process's components, in two halves (see the module's docstring): `time_torch`, then `finish`."""

    def __init__(
        self, loaded: LoadedModel, backends: dict[str, list[str]], plan: Plan, known: dict[str, Any], encode_images: bool
    ) -> None:
        """Probes the peak (before), measures the bandwidth, and computes the components' inputs."""
        self.loaded, self.backends, self.plan, self.encode_images = loaded, backends, plan, encode_images
        self.precision = PRECISION_NAMES[loaded.numerics.dtype]
        self.device = device = loaded.numerics.device
        self.timer = ComponentTimer(plan, device, dict(known.get("flops", {})), dict(known.get("traffic", {})))
        self.notes: list[str] = []
        self.errors: dict[str, str] = {}
        self.peak_precisions = list(dict.fromkeys([self.precision, _torch_vae_precision(self.precision, device.type)]))
        self.probes_before = {p: probe(device, p, plan.peak_sizes, plan.peak_warmup, plan.peak_repeats) for p in self.peak_precisions}
        self.bandwidth = copy_bandwidth(plan.bandwidth_megabytes) if device.type == "cpu" else None

        # Inputs: what the loop would hand each component for one request of the plan's size.
        pipeline = loaded.pipeline
        with torch.inference_mode():
            prompt_embeds, pooled = pipeline.text_encoder.encode([BENCHMARK_PROMPT])
        generator = torch.Generator("cpu").manual_seed(0)
        latents = torch.randn(latent_shape(plan.size, plan.size), generator=generator).to(device)
        timestep = torch.tensor([999.0], device=device)
        self.inputs = {
            UNET: (latents, timestep, prompt_embeds, pooled, time_ids(plan.size, plan.size, device=device)),
            VAE_DECODER: (latents / pipeline.config.vae_scaling_factor,),
        }

    def time_torch(self) -> ComponentsSection:
        """The text encoders, PyTorch's UNet step and VAE decode, and image encoding."""
        pipeline, precision, timer = self.loaded.pipeline, self.precision, self.timer
        pipeline.text_encoder.disable_cache()  # time the encoders, not the service's prompt-embedding cache
        timer.time("text_encoders", "torch", precision, type(pipeline.text_encoder).__name__,
                   lambda: pipeline.text_encoder.encode([BENCHMARK_PROMPT]))
        if precision in self.backends.get("torch", []):
            vae_precision = _torch_vae_precision(precision, self.device.type)
            for name, runner in ((UNET, pipeline.unet), (VAE_DECODER, pipeline.vae_decoder)):
                timer.time(ROW_NAMES[name], "torch", precision if name == UNET else vae_precision, type(runner).__name__,
                           lambda r=runner, i=self.inputs[name]: r(*i))
        if self.encode_images:
            with torch.inference_mode():
                pixels = to_uint8((pipeline.vae_decoder(*self.inputs[VAE_DECODER]) / 2 + 0.5).clamp(0, 1))[0]
            timer.time("png_encode", "pillow", "uint8", "encode_image", lambda: encode_image(np.ascontiguousarray(pixels), "png"))
        return self

    def finish(self) -> dict[str, Any]:
        """The compiled backends (releasing the torch weights first), then the peak probed again;
        returns rows, FLOP and byte counts, the peaks and bandwidth they are read against, notes and errors."""
        compiled = [b for b in BACKENDS if b.name != "torch" and self.precision in self.backends.get(b.name, [])]
        if compiled:
            self._time_compiled(compiled)
        return self._result()

    def _time_compiled(self, compiled: list[Backend]) -> None:
        components = self.loaded.components
        # 1. Every backend's files, while the torch modules are here to make what the build lacks.
        release(components.text_encoder, components.text_encoder_2)  # the inputs are computed
        # The whole VAE's weights for its decoder's: an upper bound by the encoder's few percent.
        weights = {UNET: weight_count(components.unet), VAE_DECODER: weight_count(components.vae)}
        found: list[tuple[Backend, ComponentFiles]] = []
        for backend in compiled:
            try:
                found.append((backend, self._files(backend)))
            except BackendSkipped as exc:
                self.notes.append(f"{backend.name} {self.precision}: skipped, {exc}")
            except Exception as exc:  # a failed conversion must not cost the other rows
                self._failed(f"{backend.name} {self.precision} files", exc)
        # 2. The torch weights go before any compiled runtime loads its own copy.
        release(components.unet, components.vae)
        # 3. One component at a time, each runner freed before the next loads.
        for backend, files in found:
            for name in files.paths:
                self._time_compiled_component(backend, files, name, weights[name])

    def _files(self, backend: Backend) -> ComponentFiles:
        """The build's files where --engine-dir holds them for this model, else made here."""
        compiled_hook(backend.name, self.precision)
        loaded = self.loaded
        if loaded.engine_dir is not None:
            try:
                found = build_files(backend.name, loaded.engine_dir, loaded.model, loaded.components.fingerprint)
            except ManifestError as exc:
                self.notes.append(f"{backend.name} {self.precision}: no build to time in {loaded.engine_dir} ({exc}); "
                                  "its files are made in this run from the torch modules")
            else:
                self.notes.append(f"{backend.name} {self.precision}: timed on {found.source}, the files the service serves")
                return found
        found, skipped = made_files(backend.name, loaded.components, loaded.work_dir / backend.name)
        self.notes += [f"{backend.name} {self.precision}: {problem}, so it is not timed; a build in --engine-dir "
                       "would be timed without making it" for problem in skipped]
        return found

    def _time_compiled_component(self, backend: Backend, files: ComponentFiles, name: str, weights: int) -> None:
        hook, row = HOOKS[backend.name], ROW_NAMES[name]
        precision = self.precision if name == UNET else backend.vae_precision(self.precision, self.device.type)
        what = f"{backend.name} {precision} {row}"
        problem = shortfall(f"running the {name} ({weights / 1e6:.0f} M weights) in {backend.name} {precision}",
                            hook.load_bytes(precision, weights), available_bytes())
        if problem:
            self.notes.append(f"{what}: skipped, {problem}")
            return
        path = files.paths[name]
        try:
            runner = hook.open(path, files.dims.specs()[name], precision)
            self.timer.time(row, backend.name, precision, type(runner).__name__, lambda: runner(*self.inputs[name]),
                            files={"path": str(path), "key": files.keys.get(name), "source": files.source})
        except Exception as exc:  # one backend's failure must not cost the other rows
            self._failed(what, exc)
        finally:
            runner = None  # its weights go before the next runner loads
            give_back()

    def _failed(self, what: str, exc: Exception) -> None:
        logger.exception("%s failed", what)
        self.errors[what] = f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=5)}"

    def _result(self) -> dict[str, Any]:
        device, plan = self.device, self.plan
        peak = {}
        for p in self.peak_precisions:
            peak[p] = summarize_peak(self.probes_before[p], probe(device, p, plan.peak_sizes, 0, plan.peak_repeats))
            if device.type == "cpu":
                peak[p]["nominal"] = nominal_peak(p, usable_cpu_count())
        for row in self.timer.rows:
            row["run_precision"] = self.precision  # the process's precision (a VAE may run in another)
            if row["precision"] in peak:
                row["peak_gflops"] = peak[row["precision"]]["gflops_best"]
            if self.bandwidth and row.get("bytes"):
                row["bandwidth_bytes_per_second"] = self.bandwidth["bytes_per_second"]
        return {"rows": self.timer.rows, "flops": self.timer.flops, "traffic": self.timer.traffic, "peak": peak,
                "bandwidth": self.bandwidth, "notes": self.notes, "errors": self.errors}
