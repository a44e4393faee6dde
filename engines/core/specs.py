"""The one place component shapes live: names, dtypes, dynamic axes, optimisation profiles, samples.

ONNX export, the TensorRT builder and the runtime backends all read these specs; no shape is
written anywhere else. A shape is a tuple of fixed sizes (ints) and symbols (strs) that a request
fills in: the batch, the image's height and width, and the latent's (the image's over 8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator, Mapping

import torch

from engines.base import EngineLimits
from engines.core.sdxl import LATENT_CHANNELS, MAX_TOKENS, TIME_IDS, VAE_SCALE_FACTOR, time_ids

BATCH, HEIGHT, WIDTH = "batch", "height", "width"
LATENT_HEIGHT, LATENT_WIDTH = "latent_height", "latent_width"

UNET = "unet"
VAE_DECODER = "vae_decoder"
VAE_ENCODER = "vae_encoder"  # image-to-image only
# The model components a build turns into engines; the encoder before the decoder, whose export
# frees the VAE's weights.
COMPILED_COMPONENTS = (UNET, VAE_ENCODER, VAE_DECODER)
# What text-to-image needs: all that builds from before image-to-image hold, and still serve.
REQUIRED_COMPONENTS = (UNET, VAE_DECODER)
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
# The CLIP encoders a --target cpu build converts too (builds from before them still serve, with
# the encoders in torch).
TEXT_COMPONENTS = (TEXT_ENCODER, TEXT_ENCODER_2)

Shape = tuple[int, ...]
Size = tuple[int, int]  # (width, height), as requests say it


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: torch.dtype = torch.float32
    # Stays float32 in a typed (fp16/bf16) graph: the timestep, as diffusers feeds it (the scheduler's
    # float32 timesteps; the UNet casts its embedding, not the value). bf16 would make 999 into 1000.
    keeps_fp32: bool = False


@dataclass(frozen=True)
class ModelDims:
    """The few model facts that decide component shapes; stored in the manifest, so runtimes need no config."""

    hidden_size: int  # the UNet's cross-attention width: both encoders' hidden states side by side
    pooled_size: int  # the second encoder's pooled (projected) output
    upsample_factor: int  # 2 ** number of UNet upsamplers
    latent_channels: int = LATENT_CHANNELS

    @property
    def size_multiple(self) -> int:
        """Image sides must divide by this: a traced UNet has no odd-size upsampling path (diffusers picks it in Python)."""
        return VAE_SCALE_FACTOR * self.upsample_factor

    @classmethod
    def from_unet_config(cls, config: Mapping[str, Any]) -> ModelDims:
        pooled = config["projection_class_embeddings_input_dim"] - TIME_IDS * config["addition_time_embed_dim"]
        return cls(
            hidden_size=int(config["cross_attention_dim"]),
            pooled_size=int(pooled),
            upsample_factor=2 ** (len(config["block_out_channels"]) - 1),
            latent_channels=int(config["in_channels"]),
        )

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelDims:
        return cls(**{k: int(v) for k, v in data.items()})

    def specs(self) -> dict[str, ComponentSpec]:
        return {UNET: unet_spec(self), VAE_ENCODER: vae_encoder_spec(self), VAE_DECODER: vae_decoder_spec(self)}


@dataclass(frozen=True)
class BuildRange:
    """The requests an engine is built for: a batch range and either exact sizes or a size range."""

    min_batch: int = 1
    max_batch: int = 1
    min_size: Size = (512, 512)
    max_size: Size = (512, 512)
    opt_size: Size = (512, 512)
    sizes: tuple[Size, ...] | None = None  # exact sizes; None: any size between min_size and max_size

    @classmethod
    def for_sizes(cls, sizes: tuple[Size, ...], min_batch: int = 1, max_batch: int = 1) -> BuildRange:
        if not sizes:
            raise ValueError("sizes: at least one size is needed")
        widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
        opt = (512, 512) if (512, 512) in sizes else sizes[0]
        built = cls(min_batch, max_batch, (min(widths), min(heights)), (max(widths), max(heights)), opt, tuple(sizes))
        built.check()
        return built

    @classmethod
    def for_size_range(cls, min_side: int, max_side: int, min_batch: int = 1, max_batch: int = 1) -> BuildRange:
        opt_side = min(max(512, min_side), max_side)
        built = cls(min_batch, max_batch, (min_side, min_side), (max_side, max_side), (opt_side, opt_side))
        built.check()
        return built

    def check(self, size_multiple: int = VAE_SCALE_FACTOR) -> None:
        """Raise ValueError naming the rule a range breaks (also against a model's size multiple)."""
        if not 1 <= self.min_batch <= self.max_batch:
            raise ValueError(f"batch: need 1 <= min <= max, got {self.min_batch}-{self.max_batch}")
        sides = [*self.min_size, *self.max_size, *(side for size in self.sizes or () for side in size)]
        bad = sorted({side for side in sides if side <= 0 or side % size_multiple})
        if bad:
            raise ValueError(f"sizes: every side must be a positive multiple of {size_multiple}, got {bad}")
        if any(lo > hi for lo, hi in zip(self.min_size, self.max_size)):
            raise ValueError(f"sizes: the minimum {self.min_size} is above the maximum {self.max_size}")

    def limits(self, size_multiple: int) -> EngineLimits:
        """What the service may accept from an engine built for this range."""
        return EngineLimits(
            min_size=min(self.min_size),
            max_size=max(self.max_size),
            size_multiple=size_multiple,
            max_batch=self.max_batch,
            sizes=self.sizes,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sizes"] = None if self.sizes is None else [list(s) for s in self.sizes]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildRange:
        def size(value: Any) -> Size:
            return (int(value[0]), int(value[1]))

        sizes = data.get("sizes")
        return cls(
            min_batch=int(data["min_batch"]),
            max_batch=int(data["max_batch"]),
            min_size=size(data["min_size"]),
            max_size=size(data["max_size"]),
            opt_size=size(data["opt_size"]),
            sizes=None if sizes is None else tuple(size(s) for s in sizes),
        )


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Classifier-free guidance runs the UNet on negative and positive prompts at once: twice the batch.
    max_batch_factor: int = 1

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensors(self) -> Iterator[TensorSpec]:
        yield from self.inputs
        yield from self.outputs

    def in_dtype(self, dtype: torch.dtype) -> ComponentSpec:
        """The same component with its float32 tensors (bar `keeps_fp32` ones) in `dtype`: the graph a strongly typed plan is built from."""

        def typed(tensors: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            return tuple(replace(t, dtype=dtype) if t.dtype == torch.float32 and not t.keeps_fp32 else t for t in tensors)

        return replace(self, inputs=typed(self.inputs), outputs=typed(self.outputs))

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor: {axis: symbol}} for every symbolic axis (torch.onnx.export's form)."""
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in self.tensors()}

    def shapes(self, batch: int, width: int, height: int) -> dict[str, Shape]:
        """Concrete shapes of every input and output for a batch of `width` x `height` images."""
        values = {
            BATCH: batch,
            HEIGHT: height,
            WIDTH: width,
            LATENT_HEIGHT: height // VAE_SCALE_FACTOR,
            LATENT_WIDTH: width // VAE_SCALE_FACTOR,
        }
        return {t.name: tuple(values[d] if isinstance(d, str) else d for d in t.shape) for t in self.tensors()}

    def profile(self, build_range: BuildRange) -> dict[str, tuple[Shape, Shape, Shape]]:
        """{input: (min, opt, max)} shapes: one TensorRT optimisation profile for the range."""
        max_batch = build_range.max_batch * self.max_batch_factor
        corners = [
            self.shapes(build_range.min_batch, *build_range.min_size),
            self.shapes(build_range.min_batch, *build_range.opt_size),
            self.shapes(max_batch, *build_range.max_size),
        ]
        return {name: (corners[0][name], corners[1][name], corners[2][name]) for name in self.input_names}

    def sample_inputs(self, batch: int, width: int, height: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Plausible inputs (in the spec's dtypes) on the CPU: export traces them and numerical checks compare on them."""
        generator = torch.Generator("cpu").manual_seed(seed)
        shapes = self.shapes(batch, width, height)
        samples = {}
        for spec in self.inputs:
            if spec.name == "timestep":
                value = torch.full(shapes[spec.name], 999.0)  # SDXL Turbo's one-step timestep
            elif spec.name == "time_ids":
                value = time_ids(width, height, batch)
            else:
                value = torch.randn(shapes[spec.name], generator=generator)
            samples[spec.name] = value.to(spec.dtype)
        return samples


def trace_size(dims: ModelDims) -> Size:
    """512x512 where the model allows it: the size SDXL Turbo is made for, and the one exports trace at."""
    return (512, 512) if 512 % dims.size_multiple == 0 else (dims.size_multiple * 8,) * 2


def unet_spec(dims: ModelDims) -> ComponentSpec:
    """Inputs in the order of `engines.core.pipeline.UNetRunner.__call__`."""
    return ComponentSpec(
        name=UNET,
        inputs=(
            TensorSpec("sample", (BATCH, dims.latent_channels, LATENT_HEIGHT, LATENT_WIDTH)),
            TensorSpec("timestep", (BATCH,), keeps_fp32=True),
            TensorSpec("encoder_hidden_states", (BATCH, MAX_TOKENS, dims.hidden_size)),
            TensorSpec("text_embeds", (BATCH, dims.pooled_size)),
            TensorSpec("time_ids", (BATCH, TIME_IDS)),
        ),
        outputs=(TensorSpec("noise_pred", (BATCH, dims.latent_channels, LATENT_HEIGHT, LATENT_WIDTH)),),
        max_batch_factor=2,
    )


def text_encoder_spec(name: str, hidden_size: int, pooled_size: int | None = None) -> ComponentSpec:
    """Token ids -> the penultimate layer's hidden states (what SDXL reads), and for the second
    encoder its projected pooled output too (`engines.core.text_encoders`)."""
    pooled = () if pooled_size is None else (TensorSpec("text_embeds", (BATCH, pooled_size)),)
    return ComponentSpec(
        name=name,
        inputs=(TensorSpec("input_ids", (BATCH, MAX_TOKENS), torch.int64),),
        outputs=(TensorSpec("hidden_states", (BATCH, MAX_TOKENS, hidden_size)), *pooled),
    )


def vae_decoder_spec(dims: ModelDims) -> ComponentSpec:
    return ComponentSpec(
        name=VAE_DECODER,
        inputs=(TensorSpec("latents", (BATCH, dims.latent_channels, LATENT_HEIGHT, LATENT_WIDTH)),),
        outputs=(TensorSpec("images", (BATCH, 3, HEIGHT, WIDTH)),),
    )


def vae_encoder_spec(dims: ModelDims) -> ComponentSpec:
    """Image in [-1, 1] -> the latent distribution's moments (mean and log-variance side by side,
    diffusers' DiagonalGaussianDistribution parameters): the loop draws the sample, from the request's seed."""
    return ComponentSpec(
        name=VAE_ENCODER,
        inputs=(TensorSpec("images", (BATCH, 3, HEIGHT, WIDTH)),),
        outputs=(TensorSpec("moments", (BATCH, 2 * dims.latent_channels, LATENT_HEIGHT, LATENT_WIDTH)),),
    )
