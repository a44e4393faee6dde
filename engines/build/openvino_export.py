"""torch -> OpenVINO IR for the UNet and the VAE decoder, and a numerical check of the result.

The conversion reads the same export wrappers as the ONNX path (the runners' signatures, float32
inputs, names and dynamic axes from `engines.core.specs`), straight from torch: no multi-GB ONNX
file on the way. Weights are stored as fp16 (half the disk), and the build loads the UNet in fp16
and converts it as it is (a float32 SDXL UNet is 10 GB); the CPU plugin turns them into bf16 or f32
when it compiles. The check compares the IR at f32 with torch in float32 arithmetic on the same
fp16 weights.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from engines.backends.openvino_engine import compile_for_cpu, convert_module
from engines.core.files import replaced_directory
from engines.core.resident import releasing_mapped_pages
from engines.build.checks import NumericCheck, check_size, compare
from engines.core.sdxl import MAX_TOKENS
from engines.core.specs import ComponentSpec, ModelDims

logger = logging.getLogger(__name__)

IR_FILE = "model.xml"  # its weights sit beside it in model.bin
# Bump when the conversion changes: it is part of every OpenVINO artefact's key.
OPENVINO_FORMAT = 2  # 2: converted from the fp16 UNet


def convert_to_openvino(
    module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, directory: Path, samples: dict[str, torch.Tensor] | None = None
) -> Path:
    """Convert `module` (traced on `samples`, else the spec's) into `directory`/model.xml + model.bin;
    returns the IR's path (written atomically)."""
    import openvino as ov

    with replaced_directory(directory) as staging:
        model = convert_module(module, spec, dims, samples)
        ov.save_model(model, str(staging / IR_FILE), compress_to_fp16=True)
        del model
    # The trace of a 16-bit module holds its weights as graph constants in TorchScript's global
    # class registry, for the process's life (the SDXL UNet's 5 GB): nothing traced is used again.
    torch._C._jit_clear_class_registry()
    return directory / IR_FILE


def check_inputs(spec: ComponentSpec, dims: ModelDims) -> dict[str, torch.Tensor]:
    """Inputs for the numerical check, at a size unlike the traced one (a baked-in shape shows up)."""
    width, height = check_size(dims)
    return spec.sample_inputs(batch=1, width=width, height=height, seed=1)


def torch_output(module: torch.nn.Module, spec: ComponentSpec, samples: dict[str, torch.Tensor]) -> np.ndarray:
    """torch's answer in float32 arithmetic, from the module's own (possibly 16-bit) weights."""
    with torch.no_grad(), _widened_per_layer(module):
        return module(*(samples[name] for name in spec.input_names)).float().numpy()


@contextlib.contextmanager
def _widened_per_layer(module: torch.nn.Module) -> Iterator[None]:
    """Run a 16-bit module in float32 arithmetic, each layer's weights widened only while it runs:
    a float32 copy of the whole SDXL UNet is the 10 GB the 16-bit build does without."""
    narrow: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def widen(layer: torch.nn.Module, args: Any) -> None:
        tensors = (*layer.parameters(recurse=False), *layer.buffers(recurse=False))
        narrow[id(layer)] = [(t, t.data) for t in tensors if t.dtype in (torch.float16, torch.bfloat16)]
        for tensor, data in narrow[id(layer)]:
            tensor.data = data.float()

    def restore(layer: torch.nn.Module, args: Any, output: Any) -> None:
        for tensor, data in narrow.pop(id(layer)):
            tensor.data = data

    handles = [h for layer in module.modules() for h in (layer.register_forward_pre_hook(widen), layer.register_forward_hook(restore))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_openvino(
    path: Path, spec: ComponentSpec, samples: dict[str, torch.Tensor], expected: np.ndarray | tuple[np.ndarray, ...]
) -> NumericCheck:
    """Run the IR at f32 on the CPU on the inputs torch gave `expected` for (one array per output);
    the worst output's check.

    Takes torch's answer rather than the module, so that the build can free the torch weights before
    OpenVINO compiles its own f32 copy: the two never share the memory.
    """
    compiled = compile_for_cpu(path, "f32")
    with releasing_mapped_pages(path.parent):  # the f32 copy alone: the UNet's is 10 GB
        actual = compiled([samples[name].numpy() for name in spec.input_names])
    expected = expected if isinstance(expected, tuple) else (expected,)
    return max((compare(actual[i], e) for i, e in enumerate(expected)), key=lambda check: check.max_rel)


# Text encoder check prompts: empty (all padding), short, and one past 77 tokens (cut).
TEXT_CHECK_PROMPTS = ("", "a photo of a cat", "a lighthouse on a cliff above a stormy sea at dusk, " * 8)


def text_check_inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Token ids as the engine makes them (padded to 77), for tracing and checking a text encoder."""
    ids = tokenizer(list(TEXT_CHECK_PROMPTS), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return {"input_ids": ids}


def text_torch_output(module: torch.nn.Module, samples: dict[str, torch.Tensor]) -> tuple[np.ndarray, ...]:
    """A TextEncoderModule's outputs in float32 arithmetic, as a tuple (one or two)."""
    with torch.no_grad(), _widened_per_layer(module):
        output = module(samples["input_ids"])
    return tuple(t.float().numpy() for t in (output if isinstance(output, tuple) else (output,)))


def compress_to_int8(path: Path, directory: Path) -> Path:
    """The IR at `path` with its weights compressed to int8 (NNCF's INT8_ASYM: per-channel scale and
    zero point, computed in float) into `directory`; returns the new IR's path."""
    import nncf
    import openvino as ov

    with replaced_directory(directory) as staging:
        model = nncf.compress_weights(ov.Core().read_model(str(path)), mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(model, str(staging / IR_FILE), compress_to_fp16=True)
        del model
    return directory / IR_FILE
