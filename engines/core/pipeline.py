"""The SDXL Turbo denoising loop, written once, over swappable component runners.

A backend (PyTorch, ONNX Runtime, OpenVINO, TensorRT) supplies three runners (four with the VAE
encoder, for image-to-image); the loop, the scheduler and the random numbers stay here, so every backend makes the same picture for the same
request. Runners take and return float32 torch tensors on `device`; each one casts to its own
numerics inside.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch

from engines.base import GenerationRequest
from engines.core.sdxl import latent_shape, time_ids as sdxl_time_ids

logger = logging.getLogger(__name__)

class TextEncoderRunner(Protocol):
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (penultimate hidden states of both encoders side by side [B,77,D], pooled [B,P])."""

    def is_truncated(self, prompt: str) -> bool:
        """True when the prompt is longer than the encoders read."""


class UNetRunner(Protocol):
    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """One UNet evaluation -> predicted noise, shaped like `sample`."""


class VAEDecoderRunner(Protocol):
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents already divided by the VAE's scaling factor -> image in [-1, 1], [B,3,H,W]."""


class VAEEncoderRunner(Protocol):
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], [B,3,H,W] -> the latent distribution's moments (mean, log-variance) [B,2C,H/8,W/8]."""


class ImageToImageUnavailable(ValueError):
    """An image-to-image request to a pipeline without a VAE encoder."""


@dataclass(frozen=True)
class PipelineConfig:
    scheduler_config: dict[str, Any]
    vae_scaling_factor: float
    force_zeros_for_empty_prompt: bool = True


def make_scheduler(scheduler_config: dict[str, Any]) -> Any:
    """A fresh Euler-ancestral scheduler with trailing timestep spacing (SDXL Turbo's); schedulers hold state."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler.from_config(scheduler_config, timestep_spacing="trailing")


class SDXLTurboPipeline:
    """Requests in, uint8 images out; see `__call__` for the steps."""

    def __init__(
        self,
        text_encoder: TextEncoderRunner,
        unet: UNetRunner,
        vae_decoder: VAEDecoderRunner,
        config: PipelineConfig,
        device: torch.device | str = "cpu",
        vae_encoder: VAEEncoderRunner | None = None,
    ) -> None:
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae_decoder = vae_decoder
        self.vae_encoder = vae_encoder  # None: text-to-image only
        self.config = config
        self.device = torch.device(device)
        self.stage_seconds: dict[str, float] = {}  # of the last call, for metrics

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run asynchronously: wait before reading the clock
        self.stage_seconds[name] = time.perf_counter() - started

    def __call__(self, requests: Sequence[GenerationRequest]) -> np.ndarray:
        """Run one batch of requests that share a batch signature; returns [B,H,W,3] uint8."""
        return to_uint8(self.denoise_and_decode(requests))

    def denoise_and_decode(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        """The loop proper; returns float images in [0, 1], [B,3,H,W] (diffusers' 'pt' output)."""
        # 1. Check that the batch can share one UNet call.
        if not requests:
            raise ValueError("requests: at least one request is needed")
        signatures = {r.batch_signature() for r in requests}
        if len(signatures) != 1:
            raise ValueError(f"requests: a batch must share size, steps, guidance and strength, got {sorted(map(str, signatures))}")
        first = requests[0]
        width, height, steps, do_guidance = first.width, first.height, first.num_inference_steps, first.uses_guidance
        from_image = first.image is not None
        if from_image and self.vae_encoder is None:
            raise ImageToImageUnavailable("image: this engine has no VAE encoder, so it cannot start from an image")
        if first.denoising_steps < 1:
            raise ValueError("num_inference_steps x strength must be at least 1: no step would run")
        batch = len(requests)

        # 2. Encode the prompts with both text encoders (and the negative prompts under guidance).
        self.stage_seconds = {}
        with self._stage("text_encoders"):
            prompt_embeds, pooled_embeds = self.text_encoder.encode([r.prompt for r in requests])
            if do_guidance:
                negative_embeds, negative_pooled = self._encode_negative(requests, prompt_embeds, pooled_embeds)

        # 3. Timesteps: a fresh scheduler, trailing spacing. From an image, only the last
        #    int(steps x strength) of them run (diffusers' get_timesteps).
        scheduler = make_scheduler(self.config.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        timesteps = scheduler.timesteps
        if from_image:
            t_start = (steps - first.denoising_steps) * scheduler.order
            timesteps = timesteps[t_start:]
            scheduler.set_begin_index(t_start)

        # 4. Initial latents, each from its request's own seed. The same generator then feeds the
        #    scheduler's ancestral noise, so an item's image does not depend on its batch-mates.
        #    From an image (diffusers' prepare_latents): a sample of the VAE encoder's latent
        #    distribution, scaled, then noised to the first timestep that runs.
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
        if from_image:
            with self._stage("vae_encoder"):
                image_latents = self._encode_images(requests, generators)
        noise = _randn(generators, latent_shape(width, height), self.device)  # after the encoder's draw, as diffusers
        if from_image:
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch))
        else:
            latents = noise * scheduler.init_noise_sigma

        # 5. Added conditioning: pooled text embeddings and the six time ids
        #    (original size, crop top-left, target size).
        time_ids = sdxl_time_ids(width, height, batch, self.device)
        encoder_hidden_states, text_embeds = prompt_embeds, pooled_embeds
        if do_guidance:
            encoder_hidden_states = torch.cat([negative_embeds, prompt_embeds])
            text_embeds = torch.cat([negative_pooled, pooled_embeds])
            time_ids = torch.cat([time_ids, time_ids])
            guidance = torch.tensor([r.guidance_scale for r in requests], dtype=torch.float32, device=self.device)
            guidance = guidance.view(batch, 1, 1, 1)

        # 6. Denoising loop: classifier-free guidance doubles the UNet batch.
        with self._stage("unet"):
            for t in timesteps:
                model_input = torch.cat([latents, latents]) if do_guidance else latents
                model_input = scheduler.scale_model_input(model_input, t)
                timestep = t.to(torch.float32).expand(model_input.shape[0])
                noise_pred = self.unet(model_input, timestep, encoder_hidden_states, text_embeds, time_ids)
                if do_guidance:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + guidance * (noise_text - noise_uncond)
                latents = scheduler.step(noise_pred, t, latents, generator=generators, return_dict=False)[0]

        # 7. Decode with the VAE, undoing its scaling factor.
        with self._stage("vae"):
            image = self.vae_decoder(latents / self.config.vae_scaling_factor)

        # 8. From [-1, 1] to [0, 1].
        return (image / 2 + 0.5).clamp(0, 1)

    def _encode_images(self, requests: Sequence[GenerationRequest], generators: list[torch.Generator]) -> torch.Tensor:
        """uint8 HxWx3 inputs -> scaled initial latents; each sample drawn from its request's generator."""
        assert self.vae_encoder is not None
        images = torch.stack([torch.as_tensor(r.image).permute(2, 0, 1) for r in requests])
        images = images.to(self.device, torch.float32) / 255 * 2 - 1
        moments = self.vae_encoder(images)
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # diffusers' DiagonalGaussianDistribution
        samples = _randn(generators, tuple(mean.shape[1:]), self.device)
        return (mean + std * samples) * self.config.vae_scaling_factor

    def _encode_negative(
        self, requests: Sequence[GenerationRequest], prompt_embeds: torch.Tensor, pooled_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative prompts; an empty one is zeros when the model asks for it (SDXL does)."""
        negatives = [r.negative_prompt for r in requests]
        if self.config.force_zeros_for_empty_prompt and not any(negatives):
            return torch.zeros_like(prompt_embeds), torch.zeros_like(pooled_embeds)
        embeds, pooled = self.text_encoder.encode(negatives)
        if self.config.force_zeros_for_empty_prompt:
            empty = torch.tensor([not n for n in negatives], device=embeds.device)
            embeds = torch.where(empty.view(-1, 1, 1), torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty.view(-1, 1), torch.zeros_like(pooled), pooled)
        return embeds, pooled


def _randn(generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One standard normal draw of `shape` per generator (a batch item's leading 1 included or not), stacked."""
    item = shape if len(shape) == 4 else (1, *shape)
    return torch.cat([torch.randn(item, generator=g, dtype=torch.float32) for g in generators]).to(device)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] floats in [0, 1] -> [B,H,W,3] uint8, rounded as diffusers rounds."""
    array = images.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
    if not np.isfinite(array).all():
        logger.warning("the decoded image holds NaN or infinite values; they are written as black")
        array = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0)
    return (array * 255).round().astype(np.uint8)
