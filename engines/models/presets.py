"""The offline presets, built from code: `tiny` (a tiny SDXL-shaped model, saved once to a directory
and loaded back through the real loading path) and `sdxl-random` (the full architecture, random weights)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from engines.core.sdxl import LATENT_CHANNELS, MAX_TOKENS, TIME_IDS
from engines.models.components import ALL_PARTS, SDXLComponents

PRESETS = ("tiny", "sdxl-random")
ARCHITECTURE_FILE = Path(__file__).with_name("configs") / "sdxl-turbo.json"
# Bump when the tiny preset's construction changes, so stale saved copies are not reused.
TINY_PRESET_VERSION = 1
TINY_SEED = 0


def architecture() -> dict[str, Any]:
    return json.loads(ARCHITECTURE_FILE.read_text())


def default_presets_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sdxl-turbo-service" / "presets"


def build_tiny_autoencoder(dtype: torch.dtype) -> torch.nn.Module:
    """TAESD-XL with random weights (fixed seed), for the presets' --vae tiny."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(TINY_SEED)
    with _default_dtype(dtype):
        return AutoencoderTiny().eval()  # its default config is the TAESD-XL architecture


def tiny_fingerprint() -> str:
    return f"preset:tiny-v{TINY_PRESET_VERSION}-seed{TINY_SEED}"


def sdxl_random_fingerprint() -> str:
    return f"preset:sdxl-random-seed{TINY_SEED}"


def known_fingerprint(model: str) -> str | None:
    """A preset's fingerprint without building it; None for sources known only once loaded (hub, directory)."""
    return {"tiny": tiny_fingerprint, "sdxl-random": sdxl_random_fingerprint}.get(model, lambda: None)()


def ensure_tiny_directory(presets_dir: Path) -> Path:
    """Build the tiny pipeline once and save it; later starts load the saved files."""
    target = presets_dir / f"tiny-v{TINY_PRESET_VERSION}"
    if (target / "model_index.json").exists():
        return target
    presets_dir.mkdir(parents=True, exist_ok=True)
    # Build in a private temporary directory, then rename: concurrent starts never see half a pipeline.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=presets_dir))
    try:
        save_pipeline(build_tiny_components(), staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").exists():  # lost a race to an identical build: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_pipeline(components: SDXLComponents, directory: Path) -> None:
    """Write components in the diffusers pipeline layout (what `from_pretrained` reads)."""
    for name in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae"):
        getattr(components, name).save_pretrained(directory / name)
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(components.scheduler_config, indent=2))
    model_index = {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": components.force_zeros_for_empty_prompt,
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (directory / "model_index.json").write_text(json.dumps(model_index, indent=2))


def scheduler_config() -> dict[str, Any]:
    config = dict(architecture()["scheduler"])
    config["_class_name"] = config.pop("class").split(".")[-1]
    return config


def build_byte_level_tokenizer(pad_token: str) -> Any:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (alone and word-final), no merges.

    Any text tokenizes (one token per byte), so the tiny model needs no downloaded vocabulary.
    """
    from transformers import CLIPTokenizer

    symbols = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [chr(c) for c in range(174, 256)]
    symbols += [chr(256 + n) for n in range(256 - len(symbols))]  # GPT-2's byte-to-unicode table
    vocab: dict[str, int] = {}
    for symbol in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(symbol, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=MAX_TOKENS)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in `dtype`: no float32 copy of 10 GB is ever held."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_tiny_components() -> SDXLComponents:
    """SDXL-shaped (4 latent channels, VAE factor 8, 77 tokens, two encoders, text_embeds and time_ids), tiny widths."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_byte_level_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = build_byte_level_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with '!'

    def text_config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            hidden_act="gelu",
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    torch.manual_seed(TINY_SEED)
    text_encoder = CLIPTextModel(text_config(32)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(text_config(32)).eval()
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1),
        attention_head_dim=(2, 4),
        cross_attention_dim=64,  # 32 + 32: both encoders' hidden states side by side
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=TIME_IDS * 8 + 32,  # the time ids' embeddings + pooled text embeds
        norm_num_groups=8,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),  # four blocks: a scale factor of 8, as in SDXL
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=512,
        scaling_factor=0.13025,
        force_upcast=True,
    ).eval()
    return SDXLComponents(
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config(),
        fingerprint=tiny_fingerprint(),
        vae_scaling_factor=float(vae.config.scaling_factor),
    )


def build_sdxl_random(dtype: torch.dtype, parts: frozenset[str] = ALL_PARTS) -> SDXLComponents:
    """The full SDXL Turbo architecture with random weights: noise images, the real model's compute.

    The tokenizers are the tiny preset's byte-level ones: token ids stay in range, and the cost of a
    text encoder does not depend on which 77 ids it reads.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    arch = architecture()

    def without_class(section: str) -> dict[str, Any]:
        return {k: v for k, v in arch[section].items() if k != "class"}

    torch.manual_seed(TINY_SEED)
    text_encoder = text_encoder_2 = None
    with _default_dtype(dtype):
        if "text" in parts:  # left out only with the UNet and VAE (load_components), whose weights follow these
            text_encoder = CLIPTextModel(CLIPTextConfig(**without_class("text_encoder"))).eval()
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**without_class("text_encoder_2"))).eval()
        # Built after the text encoders, so their random weights do not depend on `parts`.
        unet = UNet2DConditionModel(**without_class("unet")).eval() if "unet" in parts else None
        vae = AutoencoderKL(**without_class("vae")).eval() if "vae" in parts else None
    return SDXLComponents(
        tokenizer=build_byte_level_tokenizer(pad_token="<|endoftext|>"),
        tokenizer_2=build_byte_level_tokenizer(pad_token="!"),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config(),
        fingerprint=sdxl_random_fingerprint(),
        vae_scaling_factor=float(arch["vae"]["scaling_factor"]),
    )
