"""Which arithmetic each backend family runs in, decided here and nowhere else, and the engine's name.

The engine's name (`torch-cpu-bf16`, `openvino-cpu-bf16`, `tensorrt-fp16-vae-bf16`, ...) goes into
X-Engine and into every cache key: `engine_name` is the one function that builds it, and
tests/test_engine_names.py pins each backend's name, since a rename silently empties every cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from engines.base import EngineUnavailable
from engines.core.hardware import cpu_has_bf16
from engines.core.specs import UNET

PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
TORCH_DTYPES = {name: dtype for dtype, name in PRECISION_NAMES.items()}
TINY_VAE_SUFFIX = "-taesd"  # the tiny autoencoder decodes: another picture, another cache key


def engine_name(
    backend: str,
    precision: str,
    *,
    device: str | None = None,
    vae_precision: str | None = None,
    text_precision: str | None = None,
    static: str | None = None,
    tiny_vae: bool = False,
) -> str:
    """`backend[-device]-precision[-vae-P][-text-P][-static-S][-taesd]`: a part is named only when it is given."""
    parts = [backend, *([device] if device else []), precision]
    if vae_precision is not None:
        parts += ["vae", vae_precision]
    if text_precision is not None:
        parts += ["text", text_precision]
    if static is not None:
        parts += ["static", static]
    return "-".join(parts) + (TINY_VAE_SUFFIX if tiny_vae else "")


# --- PyTorch (also the text encoders of every backend) ---------------------------------------------


@dataclass(frozen=True)
class TorchNumerics:
    device: torch.device
    dtype: torch.dtype  # text encoders and UNet
    vae_dtype: torch.dtype  # the SDXL VAE overflows in fp16: never fp16

    @property
    def splits_batches(self) -> bool:
        """CPU runners go item by item (see `torch_runners.per_item`): a request's bytes never depend on its batch."""
        return self.device.type == "cpu"

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self.dtype]

    def name(self, tiny_vae: bool = False) -> str:
        """The torch engine's name; the tiny autoencoder runs in the engine's own dtype, so no VAE part then."""
        vae = None if tiny_vae or self.vae_dtype == self.dtype else PRECISION_NAMES[self.vae_dtype]
        return engine_name("torch", self.precision, device=self.device.type, vae_precision=vae, tiny_vae=tiny_vae)


def choose_numerics(device: str = "auto", precision: str = "auto") -> TorchNumerics:
    """CUDA: fp16 with the VAE in bf16 (or fp32). CPU: bf16 where native, else fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if precision == "auto":
        if dev.type == "cuda":
            precision = "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision not in TORCH_DTYPES:
        raise EngineUnavailable(
            f"--precision {precision} is not a PyTorch precision (fp32, bf16, fp16): int8 runs on the OpenVINO engine, "
            "from `python build_engines.py --target cpu --precision int8`"
        )
    dtype = TORCH_DTYPES[precision]
    vae_dtype = dtype
    if dtype == torch.float16:
        vae_dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return TorchNumerics(dev, dtype, vae_dtype)


# --- ONNX Runtime ----------------------------------------------------------------------------------


def onnxruntime_text_precision(precision: str, on_cuda: bool) -> str:
    """The exported graphs are fp32; --precision sets the torch text encoders' (by default fp32, fp16 on CUDA)."""
    return precision if precision != "auto" else ("fp16" if on_cuda else "fp32")


def onnxruntime_name(on_cuda: bool, text_precision: str) -> str:
    text = None if text_precision == "fp32" else text_precision
    return engine_name("onnxruntime", "fp32", device="cuda" if on_cuda else "cpu", text_precision=text)


# --- OpenVINO ----------------------------------------------------------------------------------------


def openvino_precision(precision: str = "auto") -> str:
    """OpenVINO's name for the CPU's arithmetic: bf16 where the processor has it natively, else f32;
    int8 (opt-in only): the NNCF-quantized IR of an int8 build."""
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "f32"
    if precision not in ("bf16", "fp32", "int8"):
        raise EngineUnavailable(f"--precision {precision} is not an OpenVINO CPU precision: use bf16, fp32, int8 or auto")
    return {"bf16": "bf16", "fp32": "f32", "int8": "int8"}[precision]


def openvino_float_hint(precision: str) -> str:
    """The INFERENCE_PRECISION_HINT to compile with: an int8 IR keeps some layers in float (the ends,
    normalisations, softmax), which run in bf16 where the processor has it natively, else f32."""
    if precision == "int8":
        return "bf16" if cpu_has_bf16() else "f32"
    return precision


def openvino_name(
    precision: str, tiny_vae: bool = False, text_weights: str | None = None, static_sizes: Sequence[tuple[int, int]] = ()
) -> str:
    """`openvino-cpu-f32`, `openvino-cpu-bf16`, `openvino-cpu-int8` (float layers in f32) or
    `openvino-cpu-int8-bf16` (float layers in bf16): each computes other bytes, so each its own cache key.
    The text encoders: in torch without a part (builds from before their IR); from their IR,
    `-text-ov` (float weights), `-text-ov-int8` (both int8-compressed) or `-text-ov-int8-fp16` (one each).
    Static compiles (`-static-512x512-768x512`): in bf16 a static compile's kernels round otherwise
    than the dynamic one's (pixels move by up to 3 levels), so the sizes compiled statically are
    part of the name."""
    if precision == "int8" and openvino_float_hint(precision) != "f32":
        precision = f"int8-{openvino_float_hint(precision)}"
    text = None if text_weights is None else "ov" + ("" if text_weights == "fp16" else f"-{text_weights}")
    static = "-".join(f"{w}x{h}" for w, h in sorted(static_sizes)) or None
    return engine_name("openvino", precision, device="cpu", text_precision=text, static=static, tiny_vae=tiny_vae)


# --- TensorRT ----------------------------------------------------------------------------------------


def tensorrt_graph(component: str, unet_precision: str = "fp16") -> tuple[torch.dtype, bool]:
    """The dtype of the graph a strongly typed plan is built from, and whether TF32 is allowed.

    As NVIDIA's SDXL demo builds them: the UNet in the precision asked for (fp16 by default); the
    SDXL VAE overflows in fp16 (black or NaN images), so it stays an fp32 graph with TF32 allowed.
    """
    if component == UNET:
        return TORCH_DTYPES[unet_precision], False
    return torch.float32, True


def tensorrt_name(unet_precision: str, vae_precision: str) -> str:
    """From the precisions read back from the built plans (e.g. fp16 and tf32), not from what was asked."""
    return engine_name("tensorrt", unet_precision, vae_precision=vae_precision)
