"""Model sources: a hub id, a local directory, and two offline presets built from code.

Every source that has files (a hub snapshot, a local directory, the `tiny` preset, which is saved
to a directory first) is loaded by one function, `load_components_from_directory`, through
diffusers/transformers `from_pretrained` with safetensors only and no remote code. `sdxl-random`
is built in memory in the dtype it runs in, since 10 GB of random weights are not worth a disk trip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from engines.base import DEFAULT_MODEL, EngineUnavailable  # noqa: F401  (DEFAULT_MODEL: re-exported)

logger = logging.getLogger(__name__)

PRESETS = ("tiny", "sdxl-random")
ARCHITECTURE_FILE = Path(__file__).with_name("configs") / "sdxl-turbo.json"
# Bump when the tiny preset's construction changes, so stale saved copies are not reused.
TINY_PRESET_VERSION = 1
TINY_SEED = 0
# What a hub download fetches: configs, tokenizers and the fp16 weights (half the bytes of fp32).
# The tiny autoencoder (TAESD-XL) that --vae tiny loads for hub and directory models.
TINY_VAE_HUB_ID = "madebyollin/taesdxl"
VAES = ("full", "tiny")
HUB_ALLOW_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*", "tokenizer*/*", "*.fp16.safetensors"]


@dataclass
class SDXLComponents:
    """The pieces of an SDXL Turbo pipeline, as torch modules on the CPU."""

    tokenizer: Any
    tokenizer_2: Any
    text_encoder: torch.nn.Module | None  # None once a build has dropped it (nothing is built from it)
    text_encoder_2: torch.nn.Module | None
    unet: torch.nn.Module | None  # None when loaded for the text side only
    vae: torch.nn.Module | None
    scheduler_config: dict[str, Any]
    fingerprint: str
    force_zeros_for_empty_prompt: bool = True
    tiny_vae: bool = False  # `vae` is the tiny autoencoder (TAESD-XL), not the SDXL VAE
    vae_scaling_factor: float = 0.13025  # the decoder's: latents / factor go into it


def architecture() -> dict[str, Any]:
    return json.loads(ARCHITECTURE_FILE.read_text())


def default_presets_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sdxl-turbo-service" / "presets"


def load_components(
    model: str, dtype: torch.dtype, presets_dir: Path | None = None, vae: str = "full", text_only: bool = False
) -> SDXLComponents:
    """Resolve `model` (preset name, local directory or hub id) and load it in `dtype`.

    vae="tiny" loads the tiny autoencoder (TAESD-XL) instead of the SDXL VAE: about 18 times less
    decoder work, softer images, for previews and real-time use. text_only=True leaves out the UNet
    and the SDXL VAE (compiled backends bring their own): gigabytes never read.
    """
    parts = {"text"} | (set() if text_only else {"unet"}) | ({"vae"} if vae == "full" and not text_only else set())
    components = _load_components(model, dtype, presets_dir, frozenset(parts))
    if vae == "tiny":
        components.vae = load_tiny_autoencoder(model, dtype)
        components.tiny_vae = True
        components.vae_scaling_factor = float(components.vae.config.scaling_factor)
    return components


ALL_PARTS = frozenset({"text", "unet", "vae"})


def _load_components(model: str, dtype: torch.dtype, presets_dir: Path | None, parts: frozenset[str]) -> SDXLComponents:
    if model == "sdxl-random":
        return build_sdxl_random(dtype, parts)
    if model == "tiny":
        directory = ensure_tiny_directory(presets_dir or default_presets_dir())
        return load_components_from_directory(directory, dtype, tiny_fingerprint(), parts)
    if Path(model).is_dir():
        return load_components_from_directory(Path(model), dtype, None, parts)
    if Path(model).exists() or model.startswith((".", "/")):
        raise EngineUnavailable(f"model: {model!r} is not a directory holding a diffusers pipeline")
    directory, fingerprint = download_from_hub(model)
    return load_components_from_directory(directory, dtype, fingerprint, parts)


# --- files: hub snapshots and local directories ------------------------------------------------


def download_from_hub(repo_id: str) -> tuple[Path, str]:
    """Fetch (or find in the local Hugging Face cache) a pipeline; returns its directory and revision."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as exc:  # network, auth, missing repo: all end the start-up the same way
        raise EngineUnavailable(
            f"model: could not fetch {repo_id!r} from the Hugging Face hub ({exc.__class__.__name__}: {exc}). "
            "Pass a local directory, or MODEL=tiny to run offline."
        ) from exc
    # A snapshot directory is named after the commit it holds: the revision is the fingerprint.
    return path, f"hf:{repo_id}@{path.name}"


def hash_directory(directory: Path) -> str:
    """SHA-256 over every config, tokenizer and weight file (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.suffix not in {".json", ".txt", ".safetensors"}:
            continue
        digest.update(str(path.relative_to(directory)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _weights_variant(directory: Path, subfolder: str) -> str | None:
    """'fp16' when a component ships only fp16 weight files (as hub downloads here do)."""
    files = [p.name for p in (directory / subfolder).glob("*.safetensors")]
    if files and all(".fp16." in name for name in files):
        return "fp16"
    return None


def load_components_from_directory(
    directory: Path, dtype: torch.dtype, fingerprint: str | None = None, parts: frozenset[str] = ALL_PARTS
) -> SDXLComponents:
    """The real loading path: diffusers/transformers `from_pretrained`, safetensors only, no remote code.

    `parts` ("text", "unet", "vae") says which weights to read; the text side is always read.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    missing = [
        name
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
        if not (directory / name).is_dir()
    ]
    if missing:
        raise EngineUnavailable(f"model: {directory} is not an SDXL pipeline directory (missing {', '.join(missing)})")

    def diffusers_model(cls: Any, subfolder: str) -> torch.nn.Module:
        variant = _weights_variant(directory, subfolder)
        return cls.from_pretrained(directory, subfolder=subfolder, torch_dtype=dtype, use_safetensors=True, variant=variant)

    def transformers_model(cls: Any, subfolder: str) -> torch.nn.Module:
        variant = _weights_variant(directory, subfolder)
        return cls.from_pretrained(
            directory, subfolder=subfolder, dtype=dtype, use_safetensors=True, variant=variant, trust_remote_code=False
        )

    model_index = json.loads((directory / "model_index.json").read_text()) if (directory / "model_index.json").exists() else {}
    scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
    # One component at a time: each is in its final dtype before the next one loads.
    return SDXLComponents(
        tokenizer=CLIPTokenizer.from_pretrained(directory, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(directory, subfolder="tokenizer_2"),
        text_encoder=transformers_model(CLIPTextModel, "text_encoder"),
        text_encoder_2=transformers_model(CLIPTextModelWithProjection, "text_encoder_2"),
        unet=diffusers_model(UNet2DConditionModel, "unet") if "unet" in parts else None,
        vae=diffusers_model(AutoencoderKL, "vae") if "vae" in parts else None,
        scheduler_config=scheduler_config,
        fingerprint=fingerprint or hash_directory(directory),
        force_zeros_for_empty_prompt=bool(model_index.get("force_zeros_for_empty_prompt", True)),
        vae_scaling_factor=float(json.loads((directory / "vae" / "config.json").read_text())["scaling_factor"]),
    )


# --- offline presets ------------------------------------------------------------------------------


def load_tiny_autoencoder(model: str, dtype: torch.dtype) -> torch.nn.Module:
    """TAESD-XL: random weights (fixed seed) for the offline presets, else the hub's madebyollin/taesdxl."""
    from diffusers import AutoencoderTiny

    if model in PRESETS:
        torch.manual_seed(TINY_SEED)
        with _default_dtype(dtype):
            return AutoencoderTiny().eval()  # its default config is the TAESD-XL architecture
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(TINY_VAE_HUB_ID, allow_patterns=["config.json", "*.safetensors"])
    except Exception as exc:
        raise EngineUnavailable(
            f"--vae tiny: could not fetch {TINY_VAE_HUB_ID!r} from the Hugging Face hub ({exc.__class__.__name__}: {exc})"
        ) from exc
    return AutoencoderTiny.from_pretrained(path, torch_dtype=dtype, use_safetensors=True).eval()


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
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=77)


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
            max_position_embeddings=77,
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
        in_channels=4,
        out_channels=4,
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
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids + pooled text embeds
        norm_num_groups=8,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),  # four blocks: a scale factor of 8, as in SDXL
        layers_per_block=1,
        latent_channels=4,
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
    with _default_dtype(dtype):
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
