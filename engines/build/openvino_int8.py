"""int8 OpenVINO IR (`build_engines.py --target cpu --precision int8`): post-training quantization
with NNCF, calibrated on the UNet's real inputs, and the image error it costs, measured.

Calibration runs the project's own loop (torch text encoders, the float IR just converted) over
the shipped prompt set (calibration_prompts.txt) at 1 to 4 steps, trailing spacing, as the service
would, and records every UNet and VAE decoder input. As OpenVINO's SDXL Turbo notebook does, the
UNet's first and last convolutions stay in higher precision (an IgnoredScope): the first sees the
raw latents, the last writes the noise prediction the scheduler subtracts.

Quality: the int8 images against the float images of the same build, for fixed prompts and seeds
(PSNR, mean and max absolute error in 8-bit levels). The VAE decoder is quantized only where the
error with it stays within the threshold; else the float decoder stays.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engines.backends.openvino_engine import OpenVINORunner, compile_for_cpu
from engines.backends.torch_runners import load_text_side
from engines.base import GenerationRequest
from engines.build.openvino_export import IR_FILE
from engines.core.files import replaced_directory
from engines.core.numerics import choose_numerics
from engines.core.pipeline import SDXLTurboPipeline
from engines.core.specs import ComponentSpec

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
    """The float IR as the loop's runners, with the torch text encoders, to calibrate and compare against."""

    pipeline: SDXLTurboPipeline
    specs: dict[str, ComponentSpec]

    @classmethod
    def load(cls, model: str, presets_dir: Path | None, unet_ir: Path, vae_ir: Path, specs: dict[str, ComponentSpec]) -> FloatModel:
        side = load_text_side(model, choose_numerics("cpu", "fp32"), presets_dir)
        unet = OpenVINORunner(compile_for_cpu(unet_ir, "f32"), specs["unet"])
        vae = OpenVINORunner(compile_for_cpu(vae_ir, "f32"), specs["vae_decoder"])
        return cls(SDXLTurboPipeline(side.text_encoders, unet, vae, side.config, "cpu"), specs)

    def with_runners(self, unet: Path | None = None, vae: Path | None = None) -> SDXLTurboPipeline:
        """The same loop with the UNet and/or VAE decoder replaced by other IR (compiled in f32 for
        the parts NNCF left in float, so only the quantization shows in the error)."""
        p = self.pipeline
        return SDXLTurboPipeline(
            p.text_encoder,
            p.unet if unet is None else OpenVINORunner(compile_for_cpu(unet, "f32"), self.specs["unet"]),
            p.vae_decoder if vae is None else OpenVINORunner(compile_for_cpu(vae, "f32"), self.specs["vae_decoder"]),
            p.config,
            "cpu",
        )


def calibration_inputs(pipeline: SDXLTurboPipeline, prompts: Sequence[str], size: int) -> tuple[list[Any], list[Any]]:
    """Every UNet and VAE decoder input of the loop over `prompts`: prompt i at 1 + i % 4 steps with
    seed i, so the timesteps SDXL Turbo uses at 1 to 4 steps are all seen."""
    unet, vae = Recording(pipeline.unet), Recording(pipeline.vae_decoder)
    recording = SDXLTurboPipeline(pipeline.text_encoder, unet, vae, pipeline.config, "cpu")
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            recording([GenerationRequest(prompt=prompt, seed=i, num_inference_steps=1 + i % 4, width=size, height=size)])
    return unet.calls, vae.calls


def end_convolutions(model: Any) -> list[str]:
    """The names of the first and last convolutions, in execution order."""
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return list(dict.fromkeys([convolutions[0], convolutions[-1]])) if convolutions else []


def quantize(float_ir: Path, inputs: list[Any], directory: Path, keep_ends_in_float: bool) -> tuple[Path, list[str]]:
    """NNCF post-training quantization of `float_ir` on `inputs` into `directory`/model.xml; returns
    its path and the names of the layers kept in float."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(float_ir)
    kept = end_convolutions(model) if keep_ends_in_float else []
    ignored = nncf.IgnoredScope(names=kept) if kept else None
    quantized = nncf.quantize(
        model,
        nncf.Dataset(inputs),
        model_type=nncf.ModelType.TRANSFORMER,  # keeps attention's softmax inputs in float, as for SD
        subset_size=len(inputs),
        ignored_scope=ignored,
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
