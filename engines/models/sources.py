"""Model sources: a hub id, a local directory, or an offline preset, loaded as `SDXLComponents`.

Every source that has files (a hub snapshot, a local directory, the `tiny` preset, which is saved
to a directory first) is loaded by one function, `load_components_from_directory`, through
diffusers/transformers `from_pretrained` with safetensors only and no remote code. `sdxl-random`
is built in memory in the dtype it runs in, since 10 GB of random weights are not worth a disk trip.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.base import EngineUnavailable
from engines.core.files import update_with_file
from engines.models.components import ALL_PARTS, SDXLComponents
from engines.models.hub import PREFERRED_VARIANT, fetch_snapshot, resolve_commit, weight_file
from engines.models.presets import (
    PRESETS,
    build_sdxl_random,
    build_tiny_autoencoder,
    default_presets_dir,
    ensure_tiny_directory,
    known_fingerprint,
    tiny_fingerprint,
)

logger = logging.getLogger(__name__)

# The tiny autoencoder (TAESD-XL) that --vae tiny loads for hub and directory models.
TINY_VAE_HUB_ID = "madebyollin/taesdxl"


def load_components(
    model: str,
    dtype: torch.dtype,
    presets_dir: Path | None = None,
    vae: str = "full",
    text_only: bool = False,
    revision: str | None = None,
    text_encoders: bool = True,
) -> SDXLComponents:
    """Resolve `model` (preset name, local directory or hub id) and load it in `dtype`.

    vae="tiny" loads the tiny autoencoder (TAESD-XL) instead of the SDXL VAE: about 18 times less
    decoder work, softer images, for previews and real-time use. text_only=True leaves out the UNet
    and the SDXL VAE (compiled backends bring their own): gigabytes never read; with
    text_encoders=False too, only the tokenizers and configs are read (an OpenVINO build brings the
    encoders: sdxl-random's 800 M random parameters are then never built).
    """
    if not text_encoders and not text_only:
        raise ValueError("text_encoders=False: only with text_only=True (sdxl-random's UNet weights follow its encoders')")
    parts = ({"text"} if text_encoders else set()) | (set() if text_only else {"unet"}) | ({"vae"} if vae == "full" and not text_only else set())
    components = _load_components(model, dtype, presets_dir, frozenset(parts), revision)
    if vae == "tiny":
        components.vae = load_tiny_autoencoder(model, dtype)
        components.tiny_vae = True
        components.vae_scaling_factor = float(components.vae.config.scaling_factor)
    return components


def _load_components(
    model: str, dtype: torch.dtype, presets_dir: Path | None, parts: frozenset[str], revision: str | None
) -> SDXLComponents:
    if model == "sdxl-random":
        return build_sdxl_random(dtype, parts)
    if model == "tiny":
        directory = ensure_tiny_directory(presets_dir or default_presets_dir())
        return load_components_from_directory(directory, dtype, tiny_fingerprint(), parts)
    if Path(model).is_dir():
        return load_components_from_directory(Path(model), dtype, None, parts)
    _refuse_a_path(model)
    snapshot = fetch_snapshot(model, revision)
    return load_components_from_directory(snapshot.directory, dtype, snapshot.fingerprint, parts)


def model_fingerprint(model: str, revision: str | None = None) -> str:
    """The fingerprint `load_components` reports, without loading any weights (a hub model only
    resolves its revision to a commit)."""
    _refuse_revision(model, revision)
    known = known_fingerprint(model)
    if known is not None:
        return known
    if Path(model).is_dir():
        return hash_directory(Path(model))
    _refuse_a_path(model)
    return f"hf:{model}@{resolve_commit(model, revision)}"


@dataclass(frozen=True)
class PreparedModel:
    """A model made ready to load before the service listens: its files are on this machine."""

    revision: str | None  # the hub commit to load (a pinned start loads exactly what was resolved), else None


def prepare_model(model: str, revision: str | None = None, presets_dir: Path | None = None) -> PreparedModel:
    """Resolve and fetch the model's files now, so that a missing or unreachable model ends the
    start-up with one line instead of failing later in the background."""
    _refuse_revision(model, revision)
    if model == "tiny":
        started = time.perf_counter()
        directory = ensure_tiny_directory(presets_dir or default_presets_dir())
        logger.info("model: tiny preset at %s, %.1f s", directory, time.perf_counter() - started)
        return PreparedModel(None)
    if model in PRESETS:
        return PreparedModel(None)
    if Path(model).is_dir():
        _missing_components(Path(model))
        return PreparedModel(None)
    _refuse_a_path(model)
    return PreparedModel(fetch_snapshot(model, revision).commit)


def _refuse_revision(model: str, revision: str | None) -> None:
    if revision is not None and (model in PRESETS or Path(model).is_dir()):
        raise EngineUnavailable(f"--revision {revision}: only hub models have revisions, and {model!r} is not one")


def _refuse_a_path(model: str) -> None:
    if Path(model).exists() or model.startswith((".", "/")):
        raise EngineUnavailable(f"model: {model!r} is not a directory holding a diffusers pipeline")


# --- files: hub snapshots and local directories ------------------------------------------------


def hash_directory(directory: Path) -> str:
    """SHA-256 over every config, tokenizer and weight file (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.suffix not in {".json", ".txt", ".safetensors"}:
            continue
        digest.update(str(path.relative_to(directory)).encode())
        update_with_file(digest, path)
    return "sha256:" + digest.hexdigest()


def choose_variant(variants: set[str | None], dtype: torch.dtype) -> str | None:
    """Which weight files to read when a component has several: fp16 files for an fp16 model (a GPU:
    exact, half the bytes), else the full-precision ones (a CPU's bf16 or fp32: one conversion, from
    the exact values, never fp32 -> fp16 -> bf16). One variant only: that one."""
    if dtype == torch.float16 and PREFERRED_VARIANT in variants:
        return PREFERRED_VARIANT
    if None in variants or not variants:
        return None
    return PREFERRED_VARIANT if PREFERRED_VARIANT in variants else sorted(v for v in variants if v)[0]


def weight_variants(directory: Path) -> set[str | None]:
    """The variants of a component directory's safetensors files: `model.fp16.safetensors` -> fp16, `model.safetensors` -> None."""
    variants: set[str | None] = set()
    for path in directory.glob("*.safetensors"):
        parts = path.name.split(".")
        variants.add(parts[-2] if len(parts) == 3 else None)
    return variants


def _missing_components(directory: Path) -> None:
    missing = [
        name
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
        if not (directory / name).is_dir()
    ]
    if missing:
        raise EngineUnavailable(f"model: {directory} is not an SDXL pipeline directory (missing {', '.join(missing)})")


def load_components_from_directory(
    directory: Path, dtype: torch.dtype, fingerprint: str | None = None, parts: frozenset[str] = ALL_PARTS
) -> SDXLComponents:
    """The real loading path: diffusers/transformers `from_pretrained`, safetensors only, no remote code.

    `parts` ("text", "unet", "vae") says which weights to read; the tokenizers are always read.
    """
    from transformers import CLIPTokenizer

    _missing_components(directory)

    def timed(subfolder: str, load: Any) -> torch.nn.Module:
        variant = choose_variant(weight_variants(directory / subfolder), dtype)
        path = directory / weight_file(subfolder, variant)
        size = path.stat().st_size if path.is_file() else 0
        started = time.perf_counter()
        module = load(variant)
        logger.info(
            "loading %s: %s, %s files, %.0f MB, as %s, %.1f s",
            subfolder, path.name, variant or "full-precision", size / 1e6, str(dtype).removeprefix("torch."), time.perf_counter() - started,
        )
        return module

    def diffusers_model(name: str, subfolder: str) -> torch.nn.Module:
        # Imported only when read: diffusers' models (and transformers' CLIP models) take seconds to
        # import, which a start that reads the tokenizers alone (the OpenVINO engine) does without.
        cls = getattr(importlib.import_module("diffusers"), name)
        return timed(
            subfolder,
            lambda variant: cls.from_pretrained(directory, subfolder=subfolder, torch_dtype=dtype, use_safetensors=True, variant=variant),
        )

    def transformers_model(name: str, subfolder: str) -> torch.nn.Module:
        cls = getattr(importlib.import_module("transformers"), name)
        return timed(
            subfolder,
            lambda variant: cls.from_pretrained(
                directory, subfolder=subfolder, dtype=dtype, use_safetensors=True, variant=variant, trust_remote_code=False
            ),
        )

    model_index = json.loads((directory / "model_index.json").read_text()) if (directory / "model_index.json").exists() else {}
    scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
    # One component at a time: each is in its final dtype before the next one loads.
    return SDXLComponents(
        tokenizer=CLIPTokenizer.from_pretrained(directory, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(directory, subfolder="tokenizer_2"),
        text_encoder=transformers_model("CLIPTextModel", "text_encoder") if "text" in parts else None,
        text_encoder_2=transformers_model("CLIPTextModelWithProjection", "text_encoder_2") if "text" in parts else None,
        unet=diffusers_model("UNet2DConditionModel", "unet") if "unet" in parts else None,
        vae=diffusers_model("AutoencoderKL", "vae") if "vae" in parts else None,
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
