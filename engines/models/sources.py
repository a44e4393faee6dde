"""Model sources: a hub id, a local directory, or an offline preset, loaded as `SDXLComponents`.

Every source that has files (a hub snapshot, a local directory, the `tiny` preset, which is saved
to a directory first) is loaded by one function, `load_components_from_directory`, through
diffusers/transformers `from_pretrained` with safetensors only and no remote code. `sdxl-random`
is built in memory in the dtype it runs in, since 10 GB of random weights are not worth a disk trip.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from engines.base import EngineUnavailable
from engines.core.files import update_with_file
from engines.models.components import ALL_PARTS, SDXLComponents
from engines.models.presets import (
    PRESETS,
    build_sdxl_random,
    build_tiny_autoencoder,
    default_presets_dir,
    ensure_tiny_directory,
    known_fingerprint,
    tiny_fingerprint,
)

# What a hub download fetches: configs, tokenizers and the fp16 weights (half the bytes of fp32).
HUB_ALLOW_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*", "tokenizer*/*", "*.fp16.safetensors"]
# The tiny autoencoder (TAESD-XL) that --vae tiny loads for hub and directory models.
TINY_VAE_HUB_ID = "madebyollin/taesdxl"


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


def _load_components(model: str, dtype: torch.dtype, presets_dir: Path | None, parts: frozenset[str]) -> SDXLComponents:
    if model == "sdxl-random":
        return build_sdxl_random(dtype, parts)
    if model == "tiny":
        directory = ensure_tiny_directory(presets_dir or default_presets_dir())
        return load_components_from_directory(directory, dtype, tiny_fingerprint(), parts)
    if Path(model).is_dir():
        return load_components_from_directory(Path(model), dtype, None, parts)
    _refuse_a_path(model)
    directory, fingerprint = download_from_hub(model)
    return load_components_from_directory(directory, dtype, fingerprint, parts)


def model_fingerprint(model: str) -> str:
    """The fingerprint `load_components` reports, without loading any weights (a hub model fetches
    only model_index.json to learn its revision)."""
    known = known_fingerprint(model)
    if known is not None:
        return known
    if Path(model).is_dir():
        return hash_directory(Path(model))
    _refuse_a_path(model)
    return download_from_hub(model, ["model_index.json"])[1]


def _refuse_a_path(model: str) -> None:
    if Path(model).exists() or model.startswith((".", "/")):
        raise EngineUnavailable(f"model: {model!r} is not a directory holding a diffusers pipeline")


# --- files: hub snapshots and local directories ------------------------------------------------


def download_from_hub(repo_id: str, allow_patterns: list[str] = HUB_ALLOW_PATTERNS) -> tuple[Path, str]:
    """Fetch (or find in the local Hugging Face cache) a pipeline; returns its directory and revision."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
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
        update_with_file(digest, path)
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
        return build_tiny_autoencoder(dtype)
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(TINY_VAE_HUB_ID, allow_patterns=["config.json", "*.safetensors"])
    except Exception as exc:
        raise EngineUnavailable(
            f"--vae tiny: could not fetch {TINY_VAE_HUB_ID!r} from the Hugging Face hub ({exc.__class__.__name__}: {exc})"
        ) from exc
    return AutoencoderTiny.from_pretrained(path, torch_dtype=dtype, use_safetensors=True).eval()
