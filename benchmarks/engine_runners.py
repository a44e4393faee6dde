"""The compiled backends' runners for the components section, built from the components in memory.

`build_component_runners(components, precision, work_dir)` per backend: export or convert the UNet
and the VAE decoder into `work_dir` with the build code (engines/build), then wrap them with the
runtime's own runner class, so the components section times the very runner the service serves
with. It lives here, not in the backends, because runtime code never imports build code.

A conversion made in one precision's process is reused by the next (the same work_dir): the IR and
the ONNX graphs are float32 (fp16-stored) whatever the process computes in.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from engines.core.pipeline import UNetRunner, VAEDecoderRunner
from engines.core.specs import UNET, VAE_DECODER
from engines.models.components import SDXLComponents

Runners = tuple[UNetRunner, VAEDecoderRunner]


def float32_module(components: SDXLComponents, name: str) -> torch.nn.Module:
    """The export wrapper of one component over float32 weights: a float32 copy when the process
    computes in another dtype (the converters trace in float32), the module itself otherwise."""
    from engines.build.onnx_export import export_modules

    module = export_modules(components)[name]
    return module if next(module.parameters()).dtype == torch.float32 else copy.deepcopy(module).float()


def _made(directory: Path, file: str, make: Callable[[], Path]) -> Path:
    return directory / file if (directory / file).is_file() else make()


def openvino_runners(components: SDXLComponents, precision: str, work_dir: Path) -> Runners:
    """The OpenVINO runners at `precision` (fp32 or bf16), as OpenVINOEngine compiles them."""
    from engines.backends.openvino_engine import OpenVINORunner, compile_for_cpu
    from engines.build.onnx_export import model_dims
    from engines.build.openvino_export import IR_FILE, convert_to_openvino
    from engines.core.numerics import openvino_precision

    dims = model_dims(components)
    specs = dims.specs()
    runners = []
    for name in (UNET, VAE_DECODER):
        directory = work_dir / name
        path = _made(directory, IR_FILE, lambda: convert_to_openvino(float32_module(components, name), specs[name], dims, directory))
        runners.append(OpenVINORunner(compile_for_cpu(path, openvino_precision(precision)), specs[name]))
    return runners[0], runners[1]


def onnxruntime_runners(components: SDXLComponents, precision: str, work_dir: Path) -> Runners:
    """The ONNX Runtime runners over float32 graphs on the CPU, as OnnxRuntimeEngine builds them."""
    from engines.backends.onnxruntime_engine import OnnxRuntimeRunner, onnxruntime_session
    from engines.build.onnx_export import ONNX_FILE, export_onnx, model_dims
    from engines.core.hardware import usable_cpu_count

    if precision != "fp32":
        raise ValueError(f"precision: the ONNX Runtime CPU graphs are fp32, got {precision!r}")
    dims = model_dims(components)
    specs = dims.specs()
    runners = []
    for name in (UNET, VAE_DECODER):
        directory = work_dir / name
        path = _made(directory, ONNX_FILE, lambda: export_onnx(float32_module(components, name), specs[name], dims, directory))
        session = onnxruntime_session(path, threads=usable_cpu_count())
        runners.append(OnnxRuntimeRunner(session, specs[name], torch.device("cpu"), split_batch=True))
    return runners[0], runners[1]


# backend name (benchmarks/components.py BACKENDS) -> its hook
HOOKS: dict[str, Callable[[SDXLComponents, str, Path], Runners]] = {
    "openvino": openvino_runners,
    "onnxruntime": onnxruntime_runners,
}


def build_component_runners(backend: str, components: SDXLComponents, precision: str, work_dir: Path) -> Runners:
    """The hook for `backend`; KeyError when there is none (the components section skips it with a note)."""
    return HOOKS[backend](components, precision, work_dir)
