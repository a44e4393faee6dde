"""torch -> OpenVINO IR for the UNet and the VAE decoder, and a numerical check of the result.

The conversion reads the same export wrappers as the ONNX path (the runners' signatures, float32,
names and dynamic axes from `engines.core.specs`), straight from torch: no multi-GB ONNX file on the
way, and the converter shares the torch weights instead of copying them. Weights are stored as
fp16 (half the disk); the CPU plugin turns them into bf16 or f32 when it compiles.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from engines.backends.openvino_engine import compile_for_cpu, convert_module
from engines.core.files import replaced_directory
from engines.build.checks import NumericCheck, check_size, compare
from engines.core.specs import ComponentSpec, ModelDims

logger = logging.getLogger(__name__)

IR_FILE = "model.xml"  # its weights sit beside it in model.bin
# Bump when the conversion changes: it is part of every OpenVINO artefact's key.
OPENVINO_FORMAT = 1


def convert_to_openvino(module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, directory: Path) -> Path:
    """Convert `module` into `directory`/model.xml + model.bin; returns the IR's path (written atomically)."""
    import openvino as ov

    with replaced_directory(directory) as staging:
        model = convert_module(module, spec, dims)
        ov.save_model(model, str(staging / IR_FILE), compress_to_fp16=True)
        del model
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
