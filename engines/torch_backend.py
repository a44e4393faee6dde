"""PyTorch runners: the CPU fallback (bf16 where the processor has it, else fp32) and CUDA without engines."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from engines.base import EngineLimits
from engines.hardware import cpu_has_bf16, usable_cpu_count
from engines.modules import UNetModule, VAEDecoderModule
from engines.pipeline import PipelineConfig, SDXLTurboPipeline
from engines.pipeline_engine import PipelineEngine
from engines.presets import SDXLComponents, load_components
from engines.text_encoders import TorchTextEncoders

logger = logging.getLogger(__name__)


PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class TorchNumerics:
    device: torch.device
    dtype: torch.dtype  # text encoders and UNet
    vae_dtype: torch.dtype  # the SDXL VAE overflows in fp16: never fp16

    @property
    def splits_batches(self) -> bool:
        """CPU runners go item by item (see `per_item`): a request's bytes never depend on its batch."""
        return self.device.type == "cpu"

    @property
    def label(self) -> str:
        label = f"{self.device.type}-{PRECISION_NAMES[self.dtype]}"
        return label if self.vae_dtype == self.dtype else f"{label}-vae-{PRECISION_NAMES[self.vae_dtype]}"


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
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    vae_dtype = dtype
    if dtype == torch.float16:
        vae_dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return TorchNumerics(dev, dtype, vae_dtype)


def per_item(fn: Callable[..., torch.Tensor], *batched: torch.Tensor) -> torch.Tensor:
    """Run `fn` one batch item at a time and stack the results.

    CPU kernels block their work by batch size, so a batched result can differ from the same item
    alone in the last bits, and then in a pixel. On a CPU a batch gains no throughput anyway (the
    work is compute bound), so CPU runners go item by item: a request gets the same bytes whether
    or not it shared a batch, and the cache stays consistent.
    """
    return torch.cat([fn(*(t[i : i + 1] for t in batched)) for i in range(batched[0].shape[0])])


class TorchUNet:
    def __init__(self, unet: torch.nn.Module, dtype: torch.dtype, split_batch: bool) -> None:
        self.module, self.dtype, self.split_batch = UNetModule(unet), dtype, split_batch

    @torch.inference_mode()
    def __call__(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids) -> torch.Tensor:
        sample, encoder_hidden_states, text_embeds, time_ids = (
            t.to(self.dtype) for t in (sample, encoder_hidden_states, text_embeds, time_ids)
        )
        args = (sample, timestep, encoder_hidden_states, text_embeds, time_ids)
        return (per_item(self.module, *args) if self.split_batch else self.module(*args)).float()


class TorchVAEDecoder:
    def __init__(self, vae: torch.nn.Module, dtype: torch.dtype, split_batch: bool) -> None:
        self.vae, self.dtype, self.split_batch = vae, dtype, split_batch
        self.module = VAEDecoderModule(vae)

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.dtype)
        return (per_item(self.module, latents) if self.split_batch else self.module(latents)).float()


def use_all_cores(numerics: TorchNumerics) -> None:
    """On a CPU, one torch thread per core this process may use (torch's default ignores quotas)."""
    if numerics.device.type == "cpu":
        torch.set_num_threads(usable_cpu_count())


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a module only when it is not already there (diffusers warns on needless casts)."""
    parameter = next(module.parameters())
    if parameter.device != device or parameter.dtype != dtype:
        module = module.to(device, dtype)
    return module.eval()


def torch_text_encoders(components: SDXLComponents, numerics: TorchNumerics) -> TorchTextEncoders:
    """Both CLIP encoders on their device and dtype: every backend runs them in PyTorch."""
    return TorchTextEncoders(
        components.tokenizer,
        components.tokenizer_2,
        _place(components.text_encoder, numerics.device, numerics.dtype),
        _place(components.text_encoder_2, numerics.device, numerics.dtype),
        numerics.device,
        split_batch=numerics.splits_batches,
    )


def pipeline_config(components: SDXLComponents) -> PipelineConfig:
    return PipelineConfig(
        scheduler_config=components.scheduler_config,
        vae_scaling_factor=components.vae_scaling_factor,
        force_zeros_for_empty_prompt=components.force_zeros_for_empty_prompt,
    )


def build_torch_pipeline(components: SDXLComponents, numerics: TorchNumerics) -> SDXLTurboPipeline:
    """Move components to their device and dtype and wrap them as the loop's runners."""
    device = numerics.device
    return SDXLTurboPipeline(
        torch_text_encoders(components, numerics),
        TorchUNet(_place(components.unet, device, numerics.dtype), numerics.dtype, numerics.splits_batches),
        torch_vae_decoder(components, numerics),
        pipeline_config(components),
        device,
    )


def torch_vae_decoder(components: SDXLComponents, numerics: TorchNumerics) -> TorchVAEDecoder:
    """The SDXL VAE never in fp16 (it overflows); the tiny autoencoder is safe in the engine's own dtype."""
    dtype = numerics.dtype if components.tiny_vae else numerics.vae_dtype
    return TorchVAEDecoder(_place(components.vae, numerics.device, dtype), dtype, numerics.splits_batches)


def vae_suffix(vae: str) -> str:
    """Engine names say when the tiny autoencoder decodes: a different picture, a different cache key."""
    return "-taesd" if vae == "tiny" else ""


@dataclass
class TorchSide:
    """What a compiled backend takes from PyTorch."""

    text_encoders: TorchTextEncoders
    config: PipelineConfig
    fingerprint: str
    tiny_vae: TorchVAEDecoder | None  # with --vae tiny: the decoder, which no build compiles


def load_text_side(model: str, numerics: TorchNumerics, presets_dir: Path | None, vae: str = "full") -> TorchSide:
    """For compiled backends: the text encoders, the loop's config, the model's fingerprint, and the
    tiny autoencoder when asked for.

    The UNet and the SDXL VAE are not read: the compiled engines replace them.
    """
    use_all_cores(numerics)
    components = load_components(model, numerics.dtype, presets_dir, vae, text_only=True)
    side = TorchSide(
        torch_text_encoders(components, numerics),
        pipeline_config(components),
        components.fingerprint,
        torch_vae_decoder(components, numerics) if components.tiny_vae else None,
    )
    return side


class TorchEngine(PipelineEngine):
    """The SDXL Turbo loop on PyTorch modules; the path that always works."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        precision: str = "auto",
        presets_dir: Path | None = None,
        selection_reason: str = "",
        limits: EngineLimits | None = None,
        vae: str = "full",
    ) -> None:
        self.model, self.vae = model, vae
        self.numerics = choose_numerics(device, precision)
        self.presets_dir = presets_dir
        # The tiny autoencoder runs in the engine's own dtype: no separate VAE precision to name.
        label = self.numerics.label if vae == "full" else f"{self.numerics.device.type}-{PRECISION_NAMES[self.numerics.dtype]}"
        super().__init__(f"torch-{label}{vae_suffix(vae)}", limits or EngineLimits(), selection_reason)

    def load(self) -> None:
        use_all_cores(self.numerics)
        components = load_components(self.model, self.numerics.dtype, self.presets_dir, self.vae)
        self.info.model_fingerprint = components.fingerprint
        self._pipeline = build_torch_pipeline(components, self.numerics)
        logger.info("loaded %s as %s (%s)", self.model, self.info.name, components.fingerprint)
