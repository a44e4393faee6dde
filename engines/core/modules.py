"""The UNet and the VAE decoder and encoder as modules with the loop's runner signatures (engines/core/pipeline.py).

The PyTorch runners call them, and ONNX export and the OpenVINO conversion trace them: one
definition of what each component takes and returns.
"""

from __future__ import annotations

import torch


class UNetModule(torch.nn.Module):
    """The UNet with the runner's signature: five tensors in, the predicted noise out."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            return_dict=False,
        )[0]


class VAEDecoderModule(torch.nn.Module):
    """The VAE's decoder half: scaled latents in, an image in [-1, 1] out."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


class VAEEncoderModule(torch.nn.Module):
    """The VAE's encoder half: an image in [-1, 1] in, the latent distribution's moments out
    (mean and log-variance, before any sampling: random numbers stay in the loop)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images, return_dict=False)[0].parameters


class TextEncoderModule(torch.nn.Module):
    """A CLIP text encoder as SDXL reads it: token ids in, the penultimate layer's hidden states
    out, and with `pooled` the (projected) pooled output too. Without it the last layer feeds
    nothing, so a traced graph leaves it out."""

    def __init__(self, encoder: torch.nn.Module, pooled: bool) -> None:
        super().__init__()
        self.encoder, self.pooled = encoder, pooled

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        output = self.encoder(input_ids, output_hidden_states=True)
        return (output.hidden_states[-2], output[0]) if self.pooled else output.hidden_states[-2]
