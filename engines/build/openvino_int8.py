"""int8 OpenVINO IR (`build_engines.py --target cpu --precision int8`): post-training quantization
with NNCF, calibrated on the UNet's real inputs, and the image error it costs, measured.

Calibration runs the project's own loop (torch text encoders, the float IR just converted, compiled
in the arithmetic the service serves it in: bf16 where the processor has it) over the shipped prompt
set (calibration_prompts.txt) at 1 to 4 steps, trailing spacing, as the service would, and records
the UNet and VAE decoder inputs, up to `Int8Options.samples` UNet inputs: NVIDIA's Model Optimizer
recipe for SDXL Turbo calibrates on 32 to 64. NNCF's statistics passes run in that arithmetic too
(it compiles in f32 unless told otherwise: a second 10 GB copy of the SDXL UNet). As OpenVINO's SDXL
Turbo notebook does, the UNet's first and last convolutions stay in higher precision (an
IgnoredScope): the first sees the raw latents, the last writes the noise prediction the scheduler
subtracts; and bias correction is off (the notebook's setting; it re-runs every layer). Smooth
quant, NNCF's default for transformer MatMuls, is off: on the full SDXL UNet it rescales every
MatMul weight into new f32 constants, and the build was killed at 24 GB, right after it.

Two modes (`--int8-mode`): `hybrid` (the default), optimum-intel's mode for diffusion models,
compresses the MatMul weights to int8 (computed in float after decompression) and fully quantizes
the convolutions only; `full` quantizes the activations and weights of every MatMul and convolution
(int8 compute: AMX-INT8 or VNNI). On the full SDXL UNet NNCF's full mode took more than 24 GB before
its first statistics sample and was killed (hybrid: 10.9 GB anonymous at its peak), so full mode is
for machines with more memory, or smaller models.

Quality: the int8 images against the float images of the same build, for fixed prompts and seeds
(PSNR, mean and max absolute error in 8-bit levels). The VAE decoder is quantized only where the
error with it stays within the threshold; else the float decoder stays.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from engines.backends.openvino_engine import OpenVINOEngine, OpenVINORunner, compile_for_cpu
from engines.base import GenerationRequest
from engines.build.openvino_export import IR_FILE
from engines.core.files import replaced_directory
from engines.core.pipeline import SDXLTurboPipeline
from engines.core.specs import ComponentSpec
from engines.manifest import Manifest

logger = logging.getLogger(__name__)

CALIBRATION_PROMPTS = Path(__file__).with_name("calibration_prompts.txt")
# The int8 images' PSNR against the float ones, in dB, below which a build is not usable. 20 dB is an
# RMS error of 10 levels in 255: the same picture with visible grain; real SDXL Turbo weights stay
# well above it (OpenVINO's notebook reports no visible change).
MIN_PSNR_DB = 20.0
# Fixed (prompt, seed, steps) whose images the quality figures compare.
QUALITY_CASES: tuple[tuple[str, int, int], ...] = (
    ("A cinematic shot of a baby racoon wearing an intricate italian priest robe", 0, 1),
    ("a bowl of ramen with steam rising, studio food photography", 1, 1),
    ("a snowy mountain cabin with warm light in the windows", 2, 2),
    ("a portrait of a woman with freckles, natural light, 85mm", 3, 4),
)


INT8_MODES = ("full", "hybrid")
DEFAULT_SAMPLES = 32


@dataclass(frozen=True)
class Int8Options:
    """How the int8 IR is made; every field is part of the int8 artefact's key."""

    samples: int = DEFAULT_SAMPLES  # UNet inputs NNCF calibrates on (the VAE decoder: one per image of them)
    mode: str = "hybrid"  # see INT8_MODES and the module's docstring

    def __post_init__(self) -> None:
        if self.mode not in INT8_MODES:
            raise ValueError(f"int8 mode must be one of {', '.join(INT8_MODES)}, got {self.mode!r}")
        if self.samples < 1:
            raise ValueError(f"calibration samples must be at least 1, got {self.samples}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def calibration_prompts(path: Path = CALIBRATION_PROMPTS) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class Recording:
    """A runner that records each call's inputs (float32 numpy, in the spec's order) and passes it on."""

    def __init__(self, runner: Callable[..., torch.Tensor]) -> None:
        self.runner, self.calls = runner, []

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls.append([t.detach().to(torch.float32).numpy().copy() for t in inputs])
        return self.runner(*inputs)


@dataclass
class FloatModel:
    """The float build as the service loads and runs it (its text encoders, dynamic shapes, the float
    arithmetic `hint`), to calibrate on and to compare the int8 images against."""

    pipeline: SDXLTurboPipeline
    specs: dict[str, ComponentSpec]
    hint: str  # the INFERENCE_PRECISION_HINT the service compiles an int8 build's float layers in

    @classmethod
    def load(cls, model: str, presets_dir: Path | None, engine_dir: Path, manifest: Manifest, hint: str) -> FloatModel:
        engine = OpenVINOEngine(model, engine_dir, manifest, "bf16" if hint == "bf16" else "fp32", presets_dir, static_sizes=())
        engine.load()
        return cls(engine.pipeline, manifest.dims.specs(), hint)

    def with_runners(self, unet: Path | None = None, vae: Path | None = None) -> SDXLTurboPipeline:
        """The same loop with the UNet and/or VAE decoder replaced by other IR, compiled as the
        service compiles them, so the error is what a user of the int8 build sees."""
        p = self.pipeline
        return SDXLTurboPipeline(
            p.text_encoder,
            p.unet if unet is None else OpenVINORunner(compile_for_cpu(unet, self.hint), self.specs["unet"]),
            p.vae_decoder if vae is None else OpenVINORunner(compile_for_cpu(vae, self.hint), self.specs["vae_decoder"]),
            p.config,
            "cpu",
        )


def calibration_inputs(pipeline: SDXLTurboPipeline, prompts: Sequence[str], size: int, samples: int) -> tuple[list[Any], list[Any]]:
    """The first `samples` UNet inputs (and the VAE decoder inputs of the same images) of the loop
    over `prompts`, prompt i at 1 + i % 4 steps with seed i, so that the timesteps SDXL Turbo uses
    at 1 to 4 steps are all seen; logs its progress with an estimate of the time left."""
    unet, vae = Recording(pipeline.unet), Recording(pipeline.vae_decoder)
    recording = SDXLTurboPipeline(pipeline.text_encoder, unet, vae, pipeline.config, "cpu")
    started = time.monotonic()
    with torch.inference_mode():
        for i, prompt in enumerate(prompts * math.ceil(samples / len(prompts))):
            if len(unet.calls) >= samples:
                break
            recording([GenerationRequest(prompt=prompt, seed=i, num_inference_steps=1 + i % 4, width=size, height=size)])
            done, elapsed = min(len(unet.calls), samples), time.monotonic() - started
            logger.info("calibration inputs: %d/%d UNet inputs, %.0f s, about %.0f s left", done, samples, elapsed,
                        elapsed / done * (samples - done))
    return unet.calls[:samples], vae.calls


def end_convolutions(model: Any) -> list[str]:
    """The names of the first and last convolutions, in execution order."""
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return list(dict.fromkeys([convolutions[0], convolutions[-1]])) if convolutions else []


def weighted_matmuls(model: Any) -> list[str]:
    """The MatMuls whose second input is a weight (a constant, through its decompression Convert)."""
    def constant(node: Any) -> bool:
        while node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "MatMul" and constant(op.input_value(1).get_node())]


@contextlib.contextmanager
def nncf_statistics_in(hint: str) -> Iterator[None]:
    """NNCF's statistics passes compiled with `hint` instead of the f32 NNCF forces: in bf16 the SDXL
    UNet's compiled copy is 5 GB, not 10, and runs at the service's speed. A min/max range read in
    bf16 (8 significant bits) is as good as one read in f32 for an 8-bit quantizer."""
    from nncf.openvino import engine

    original = engine.OVNativeEngine.__init__

    def init(self: Any, model: Any, use_fp32_precision: bool = True) -> None:
        original(self, model, use_fp32_precision=use_fp32_precision and hint == "f32")

    engine.OVNativeEngine.__init__ = init
    try:
        yield
    finally:
        engine.OVNativeEngine.__init__ = original


def quantize(float_ir: Path, inputs: list[Any], directory: Path, keep_ends_in_float: bool, options: Int8Options,
             hint: str) -> tuple[Path, list[str]]:
    """NNCF post-training quantization of `float_ir` on `inputs` into `directory`/model.xml, in
    `options.mode`; returns its path and the names of the layers kept in float."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    model = ov.Core().read_model(float_ir)
    kept = end_convolutions(model) if keep_ends_in_float else []
    not_quantized = list(kept)
    if options.mode == "hybrid":
        matmuls = weighted_matmuls(model)
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                      ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
        not_quantized += matmuls  # their weights are int8 already, their activations stay float
    logger.info("NNCF: %s quantization of %s on %d inputs: a statistics pass, then the quantized graph; "
                "its bars show the time left", options.mode, float_ir.parent.name, len(inputs))
    with nncf_statistics_in(hint):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(inputs),
            model_type=nncf.ModelType.TRANSFORMER,  # keeps attention's softmax inputs in float, as for SD
            subset_size=len(inputs),
            ignored_scope=nncf.IgnoredScope(names=not_quantized) if not_quantized else None,
            advanced_parameters=AdvancedQuantizationParameters(
                # OpenVINO's SDXL Turbo notebook's setting: bias correction re-runs every layer.
                disable_bias_correction=True,
                # Smooth quant off (NNCF's TRANSFORMER default is on for MatMuls): on the full SDXL UNet it
                # rescales every MatMul weight into new f32 constants, and the build was killed at 24 GB.
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),
            ),
        )
    with replaced_directory(directory) as staging:
        ov.save_model(quantized, str(staging / IR_FILE), compress_to_fp16=True)
    return directory / IR_FILE, kept


def images(pipeline: SDXLTurboPipeline, size: int) -> list[np.ndarray]:
    with torch.inference_mode():
        return [
            pipeline([GenerationRequest(prompt=p, seed=seed, num_inference_steps=steps, width=size, height=size)])[0]
            for p, seed, steps in QUALITY_CASES
        ]


def image_error(reference: list[np.ndarray], candidate: list[np.ndarray], min_psnr_db: float) -> dict[str, Any]:
    """PSNR (dB, over all images' pixels), mean and max absolute error in 8-bit levels, and the verdict."""
    diff = np.concatenate([(c.astype(np.float64) - r.astype(np.float64)).ravel() for r, c in zip(reference, candidate)])
    mse = float(np.mean(diff**2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return {
        "psnr_db": psnr if math.isfinite(psnr) else None,  # None: identical images
        "mean_abs": float(np.mean(np.abs(diff))),
        "max_abs": float(np.max(np.abs(diff))),
        "images": len(reference),
        "min_psnr_db": min_psnr_db,
        "usable": not math.isfinite(psnr) or psnr >= min_psnr_db,
    }


def describe(error: dict[str, Any]) -> str:
    psnr = "identical" if error["psnr_db"] is None else f"PSNR {error['psnr_db']:.1f} dB"
    return f"{psnr}, mean |error| {error['mean_abs']:.2f} levels, max {error['max_abs']:.0f} (over {error['images']} images)"
