"""The compiled backends of the components section: the files each engine serves, and the runner it serves them with.

Files come from the build in --engine-dir where it holds them for this model (the very files the
service serves: the OpenVINO IR of `build_engines.py --target cpu`, the ONNX graphs of `--onnx-only`),
hashed against its manifest; otherwise they are made in this run from the torch modules with the
build code (engines/build), into the work directory, where the next precision's process finds them.
This lives here, not in the backends, because runtime code never imports build code.

Memory, in bytes per weight of the component (measured as VmHWM's growth on a 368 M-parameter
SDXL-shaped UNet, compiled and run once at 512x512): converting to OpenVINO holds 3.8 beside the
torch module (the converter's own copy), exporting to ONNX 12.5 (the tracer, then the graph read
back whole to be written as one data file); a compiled OpenVINO model 6.0 in f32 and 3.8 in bf16
(its copy, and the fp16 IR it read), mapped or not; an ONNX Runtime session 5.4. For the full UNet
(2.57 G weights): 32 GB to export beside torch's 10 GB, 15 GB to run in OpenVINO f32, 14 GB in ONNX
Runtime, so on a 24 GB machine a compiled runtime loads only once torch's copy is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks.memory_fit import available_bytes, shortfall
from engines.core.pipeline import UNetRunner, VAEDecoderRunner
from engines.core.specs import UNET, VAE_DECODER, ComponentSpec, ModelDims
from engines.manifest import ArtefactKind, Manifest
from engines.models.components import SDXLComponents

Runner = UNetRunner | VAEDecoderRunner
COMPONENTS = (UNET, VAE_DECODER)  # what the components section times in a compiled backend


@dataclass(frozen=True)
class ComponentFiles:
    """One backend's file per component (those it has), the manifest key of each, where they came
    from, and the dimensions they were made for (the shapes their runners take)."""

    paths: dict[str, Path]
    keys: dict[str, str]  # empty for files made in this run
    source: str
    dims: ModelDims


def _convert_to_openvino(module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, directory: Path) -> Path:
    from engines.build.openvino_export import convert_to_openvino

    return convert_to_openvino(module, spec, dims, directory)


def _export_onnx(module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, directory: Path) -> Path:
    from engines.build.onnx_export import export_onnx

    return export_onnx(module, spec, dims, directory)


def _openvino_runner(path: Path, spec: ComponentSpec, precision: str) -> Runner:
    """As OpenVINOEngine compiles it: the IR mapped, this processor's bf16 or f32."""
    from engines.backends.openvino_engine import OpenVINORunner, compile_for_cpu
    from engines.core.numerics import openvino_precision

    return OpenVINORunner(compile_for_cpu(path, openvino_precision(precision)), spec)


def _onnxruntime_runner(path: Path, spec: ComponentSpec, precision: str) -> Runner:
    """As OnnxRuntimeEngine builds it on the CPU: the float32 graph (its only precision), every core, item by item."""
    from engines.backends.onnxruntime_engine import OnnxRuntimeRunner, onnxruntime_session
    from engines.core.hardware import usable_cpu_count

    return OnnxRuntimeRunner(onnxruntime_session(path, threads=usable_cpu_count()), spec, torch.device("cpu"), split_batch=True)


@dataclass(frozen=True)
class CompiledBackend:
    kind: ArtefactKind  # the manifest's name for its files
    file_name: str  # the file its runtime opens, in a component's directory
    make: Callable[[torch.nn.Module, ComponentSpec, ModelDims, Path], Path]  # from a float32 module
    make_bytes_per_weight: float  # held beside the torch module while making a file (see above)
    load_bytes_per_weight: dict[str, float]  # by precision: held while its runner loads and runs
    open: Callable[[Path, ComponentSpec, str], Runner]

    def load_bytes(self, precision: str, weights: int) -> int:
        return int(self.load_bytes_per_weight[precision] * weights)

    def make_bytes(self, module: torch.nn.Module) -> int:
        """What making a file from `module` adds: casting it to float32 in place, then the maker's own copy."""
        added = sum(p.numel() * (4 - p.element_size()) for p in module.parameters())
        return added + int(self.make_bytes_per_weight * sum(p.numel() for p in module.parameters()))


# backend name (benchmarks/components.py BACKENDS) -> its hook; a backend without one is skipped with a note
HOOKS: dict[str, CompiledBackend] = {
    "openvino": CompiledBackend("openvino", "model.xml", _convert_to_openvino, 3.8, {"fp32": 6.0, "bf16": 3.8}, _openvino_runner),
    "onnxruntime": CompiledBackend("onnx", "model.onnx", _export_onnx, 12.5, {"fp32": 5.4}, _onnxruntime_runner),
}


def build_files(backend: str, engine_dir: Path, model: str, fingerprint: str) -> ComponentFiles:
    """The files of the build in `engine_dir`, every one hashed against its manifest; raises
    ManifestError (saying why) when it holds none for this model."""
    hook = HOOKS[backend]
    manifest = Manifest.read(engine_dir, model, hook.kind)
    manifest.check_model(engine_dir, model, fingerprint, hook.kind)
    paths, keys = {}, {}
    for name in COMPONENTS:
        artefact = manifest.artefact(engine_dir, name, hook.kind)
        for relative, expected in artefact.files.items():
            manifest.verify_file(engine_dir, relative, expected, hook.kind)
        paths[name], keys[name] = engine_dir / artefact.path, artefact.key
    return ComponentFiles(paths, keys, f"the {hook.kind} files of the build in {engine_dir}", manifest.dims)


def made_files(backend: str, components: SDXLComponents, work_dir: Path) -> tuple[ComponentFiles, list[str]]:
    """Each component's file made from the torch modules into `work_dir` (or found there, made by an
    earlier process), and why any was not made: it would not fit in memory.

    A module is cast to float32 in place (the converters trace in float32): the caller is done timing
    it, and a float32 copy beside it would hold the UNet twice.
    """
    from engines.build.onnx_export import export_modules, model_dims

    hook = HOOKS[backend]
    dims = model_dims(components)
    specs, modules = dims.specs(), export_modules(components)
    paths, skipped = {}, []
    for name in COMPONENTS:
        directory = work_dir / name
        if not (directory / hook.file_name).is_file():
            problem = shortfall(f"making the {name} {hook.kind} file", hook.make_bytes(modules[name]), available_bytes())
            if problem:
                skipped.append(problem)
                continue
            hook.make(modules[name].float(), specs[name], dims, directory)
        paths[name] = directory / hook.file_name
    return ComponentFiles(paths, {}, f"{hook.kind} files made in this run from the torch modules", dims), skipped
