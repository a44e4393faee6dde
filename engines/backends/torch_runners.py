"""PyTorch pieces every backend uses: the UNet and VAE runners (decoder and encoder), and the text side (both CLIP encoders,
the loop's config, the model's fingerprint) that the compiled backends keep in PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from engines.core.hardware import usable_cpu_count
from engines.core.modules import UNetModule, VAEDecoderModule, VAEEncoderModule
from engines.core.numerics import TorchNumerics
from engines.core.pipeline import PipelineConfig, SDXLTurboPipeline
from engines.core.text_encoders import TorchTextEncoders
from engines.models.components import SDXLComponents
from engines.models.sources import load_components


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
    wrapper: Callable[[torch.nn.Module], torch.nn.Module] = VAEDecoderModule

    def __init__(self, vae: torch.nn.Module, dtype: torch.dtype, split_batch: bool) -> None:
        self.vae, self.dtype, self.split_batch = vae, dtype, split_batch
        self.module = type(self).wrapper(vae)

    @torch.inference_mode()
    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.dtype)
        return (per_item(self.module, tensor) if self.split_batch else self.module(tensor)).float()


class TorchVAEEncoder(TorchVAEDecoder):
    """The other half of the same VAE, in the same dtype: images in, the latent moments out."""

    wrapper = VAEEncoderModule


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


def torch_vae_decoder(components: SDXLComponents, numerics: TorchNumerics) -> TorchVAEDecoder:
    """The SDXL VAE never in fp16 (it overflows); the tiny autoencoder is safe in the engine's own dtype."""
    dtype = numerics.dtype if components.tiny_vae else numerics.vae_dtype
    return TorchVAEDecoder(_place(components.vae, numerics.device, dtype), dtype, numerics.splits_batches)


def torch_vae_encoder(components: SDXLComponents, numerics: TorchNumerics) -> TorchVAEEncoder | None:
    """The SDXL VAE's encoder, beside its decoder (never fp16); None with the tiny autoencoder, whose
    deterministic encoder is not diffusers' sampled one (image-to-image needs the full VAE)."""
    if components.tiny_vae:
        return None
    return TorchVAEEncoder(_place(components.vae, numerics.device, numerics.vae_dtype), numerics.vae_dtype, numerics.splits_batches)


TINY_VAE_NO_IMAGE_TO_IMAGE = "image-to-image needs the full VAE's encoder; this service runs --vae tiny"


def build_torch_pipeline(components: SDXLComponents, numerics: TorchNumerics) -> SDXLTurboPipeline:
    """Move components to their device and dtype and wrap them as the loop's runners."""
    device = numerics.device
    return SDXLTurboPipeline(
        torch_text_encoders(components, numerics),
        TorchUNet(_place(components.unet, device, numerics.dtype), numerics.dtype, numerics.splits_batches),
        torch_vae_decoder(components, numerics),
        pipeline_config(components),
        device,
        vae_encoder=torch_vae_encoder(components, numerics),
    )


@dataclass
class TorchSide:
    """What a compiled backend takes from PyTorch."""

    text_encoders: TorchTextEncoders | None  # None when loaded without them (the OpenVINO build brings its own)
    tokenizers: tuple[Any, Any]
    config: PipelineConfig
    fingerprint: str
    tiny_vae: TorchVAEDecoder | None  # with --vae tiny: the decoder, which no build compiles


def load_text_side(
    model: str,
    numerics: TorchNumerics,
    presets_dir: Path | None,
    vae: str = "full",
    revision: str | None = None,
    text_encoders: bool = True,
) -> TorchSide:
    """For compiled backends: the text encoders (with `text_encoders`; the tokenizers always), the
    loop's config, the model's fingerprint, and the tiny autoencoder when asked for.

    The UNet and the SDXL VAE are not read: the compiled engines replace them.
    """
    use_all_cores(numerics)
    components = load_components(model, numerics.dtype, presets_dir, vae, text_only=True, revision=revision, text_encoders=text_encoders)
    return TorchSide(
        torch_text_encoders(components, numerics) if text_encoders else None,
        (components.tokenizer, components.tokenizer_2),
        pipeline_config(components),
        components.fingerprint,
        torch_vae_decoder(components, numerics) if components.tiny_vae else None,
    )
