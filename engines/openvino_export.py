"""torch -> OpenVINO IR for the UNet and the VAE decoder, and a numerical check of the result.

The conversion reads the same export wrappers as the ONNX path (the runners' signatures, float32,
names and dynamic axes from `engines.components`), straight from torch: no multi-GB ONNX file on the
way, and the converter shares the torch weights instead of copying them. Weights are stored as
fp16 (half the disk); the CPU plugin turns them into bf16 or f32 when it compiles.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.base import EngineUnavailable
from engines.components import ComponentSpec, ModelDims
from engines.hardware import cpu_has_bf16, usable_cpu_count
from engines.onnx_export import NumericCheck, check_size, compare, trace_size

logger = logging.getLogger(__name__)

IR_FILE = "model.xml"  # its weights sit beside it in model.bin
# Bump when the conversion changes: it is part of every OpenVINO artefact's key.
OPENVINO_FORMAT = 1
INSTALL_HINT = "pip install '.[openvino]'"


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.get_version())


def inference_precision(precision: str = "auto") -> str:
    """OpenVINO's name for the CPU's arithmetic: bf16 where the processor has it natively, else f32."""
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "f32"
    if precision not in ("bf16", "fp32"):
        raise EngineUnavailable(f"--precision {precision} is not an OpenVINO CPU precision: use bf16, fp32 or auto")
    return {"bf16": "bf16", "fp32": "f32"}[precision]


def compile_for_cpu(path: Path | Any, precision: str) -> Any:
    """Compile an IR file (or an in-memory model) for this CPU: latency first, every core we may use."""
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": usable_cpu_count(),
    }
    return ov.Core().compile_model(str(path) if isinstance(path, Path) else path, "CPU", config)


def convert_module(module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims) -> Any:
    """A float32 torch module with the spec's inputs -> an in-memory OpenVINO model with dynamic axes."""
    import openvino as ov

    width, height = trace_size(dims)
    samples = spec.sample_inputs(batch=2, width=width, height=height)
    shapes = [ov.PartialShape([-1 if isinstance(d, str) else d for d in t.shape]) for t in spec.inputs]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # diffusers branches on shapes in Python
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO's converter traces with torch.jit
        model = ov.convert_model(module, example_input=tuple(samples[name] for name in spec.input_names), input=shapes)
    for port, name in zip(model.outputs, spec.output_names):
        port.get_tensor().set_names({name})
    return model


def convert_to_openvino(module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, directory: Path) -> Path:
    """Convert `module` into `directory`/model.xml + model.bin; returns the IR's path (written atomically)."""
    import openvino as ov

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        model = convert_module(module, spec, dims)
        ov.save_model(model, str(staging / IR_FILE), compress_to_fp16=True)
        del model
        staging.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory / IR_FILE


def check_inputs(spec: ComponentSpec, dims: ModelDims) -> dict[str, torch.Tensor]:
    """Inputs for the numerical check, at a size unlike the traced one (a baked-in shape shows up)."""
    width, height = check_size(dims)
    return spec.sample_inputs(batch=1, width=width, height=height, seed=1)


def torch_output(module: torch.nn.Module, spec: ComponentSpec, samples: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return module(*(samples[name] for name in spec.input_names)).float().numpy()


def check_openvino(path: Path, spec: ComponentSpec, samples: dict[str, torch.Tensor], expected: np.ndarray) -> NumericCheck:
    """Run the IR at f32 on the CPU on the inputs torch gave `expected` for.

    Takes torch's answer rather than the module, so that the build can free the torch weights before
    OpenVINO compiles its own f32 copy: the two never share the memory.
    """
    compiled = compile_for_cpu(path, "f32")
    actual = compiled([samples[name].numpy() for name in spec.input_names])[0]
    return compare(actual, expected)
