"""Hugging Face hub models: the files a pipeline needs, a revision resolved to its commit, and those
files fetched into (or found in) the local Hugging Face cache.

The file list lives here and nowhere else: the allow-patterns of a download are these exact paths,
and tests/test_hub_cache.py checks them against the real stabilityai/sdxl-turbo file list below.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from engines.base import EngineUnavailable

logger = logging.getLogger(__name__)

# What the loader reads besides weights: the pipeline index, the scheduler, each component's config,
# and both CLIP tokenizers (vocab.json + merges.txt make the tokenizer; the other two set its tokens).
CONFIG_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    *(f"{c}/config.json" for c in ("text_encoder", "text_encoder_2", "unet", "vae")),
    *(f"{t}/{f}" for t in ("tokenizer", "tokenizer_2") for f in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")),
)
# Each component's weight file stem (diffusers and transformers name them differently).
WEIGHT_STEMS = {"text_encoder": "model", "text_encoder_2": "model", "unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}
# fp16: half the bytes of the full-precision files, and exact when a GPU runs fp16.
PREFERRED_VARIANT = "fp16"

# The file list of https://huggingface.co/stabilityai/sdxl-turbo (the "Files and versions" tree of
# main and of each sub-folder: .../tree/main, .../tree/main/unet, /vae, /text_encoder,
# /text_encoder_2, /tokenizer, and commit 40ffc97 for the root), read 2026-11-25 through the search
# tool's stored copies of those pages. Only the test reads it: it proves the allow-patterns ask for
# nothing the real repository lacks and take none of its ONNX exports or single-file checkpoints.
SDXL_TURBO_REPO_FILES = (
    ".gitattributes", "LICENSE.TXT", "README.md", "image_quality_one_step.png", "model_index.json",
    "output_tile.jpg", "prompt_alignment_one_step.png", "sd_xl_turbo_1.0.safetensors", "sd_xl_turbo_1.0_fp16.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors", "text_encoder/model.onnx", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors", "text_encoder_2/model.onnx",
    "text_encoder_2/model.onnx_data", "text_encoder_2/model.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json", "tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors",
    "unet/model.onnx", "unet/model.onnx_data",
    "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors",
    "vae_decoder/config.json", "vae_decoder/model.onnx", "vae_encoder/config.json", "vae_encoder/model.onnx",
)
_COMMIT = re.compile(r"[0-9a-f]{40}")


def weight_file(component: str, variant: str | None) -> str:
    """`unet/diffusion_pytorch_model.fp16.safetensors` for variant fp16; no infix for the full-precision file."""
    return f"{component}/{WEIGHT_STEMS[component]}{'.' + variant if variant else ''}.safetensors"


def pipeline_files(variant: str | None) -> list[str]:
    """Every file the loader reads from a pipeline whose weights are `variant` (None: full precision)."""
    return [*CONFIG_FILES, *(weight_file(c, variant) for c in WEIGHT_STEMS)]


def download_variant(repo_files: Iterable[str]) -> str | None:
    """fp16 when the repository has every component in fp16, else its full-precision files."""
    names = set(repo_files)
    return PREFERRED_VARIANT if all(weight_file(c, PREFERRED_VARIANT) in names for c in WEIGHT_STEMS) else None


@dataclass(frozen=True)
class HubSnapshot:
    repo_id: str
    commit: str
    directory: Path

    @property
    def fingerprint(self) -> str:
        """The commit, not the branch: a model update is a new fingerprint, so a new cache key."""
        return f"hf:{self.repo_id}@{self.commit}"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def fetch_snapshot(repo_id: str, revision: str | None = None) -> HubSnapshot:
    """The pipeline at `revision` (a commit, tag or branch; None: main) in the local Hugging Face cache,
    downloaded first when files are missing. Raises EngineUnavailable with one actionable line."""
    started = time.perf_counter()
    asked = revision or "main"
    logger.info("model: resolving %s at revision %s", repo_id, asked)
    if _COMMIT.fullmatch(asked):  # a pinned commit already complete in the cache needs no network at all
        cached = _cached(repo_id, asked)
        if cached is not None:
            return _found(cached, started, "in the Hugging Face cache")
    if not _offline():
        online = _download(repo_id, asked)
        if online is not None:
            return _found(online, started, "")
    cached = _cached(repo_id, asked)
    if cached is None:
        raise EngineUnavailable(
            f"model: {repo_id} at revision {asked} is not in the Hugging Face cache ({_cache_dir()}) and the hub "
            f"cannot be reached{' (HF_HUB_OFFLINE is set)' if _offline() else ''}; download it once with network, "
            "point HF_HOME at a cache that has it, pass a local directory, or use --model tiny"
        )
    return _found(cached, started, "in the Hugging Face cache (offline)")


def resolve_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit `revision` names, without downloading weights (the hub's answer, else the local cache's)."""
    asked = revision or "main"
    if not _offline():
        try:
            from huggingface_hub import HfApi

            return str(HfApi().model_info(repo_id, revision=asked).sha)
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the cache, as huggingface_hub does
            _refuse_hub_answer(repo_id, asked, exc)
    cached = _cached(repo_id, asked, complete=False)
    if cached is None:
        raise EngineUnavailable(f"model: {repo_id} at revision {asked} is not in the Hugging Face cache ({_cache_dir()}) and the hub cannot be reached")
    return cached.commit


def _found(snapshot: HubSnapshot, started: float, where: str) -> HubSnapshot:
    logger.info(
        "model: %s at commit %s%s (%s), %.1f s", snapshot.repo_id, snapshot.commit[:12], f" {where}" if where else "",
        snapshot.directory, time.perf_counter() - started,
    )
    return snapshot


def _cached(repo_id: str, revision: str, complete: bool = True) -> HubSnapshot | None:
    """The snapshot the local cache holds for `revision` (refs/<branch or tag>, or a commit), if any."""
    from huggingface_hub import snapshot_download

    try:
        directory = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, or a half-written cache: not usable
        return None
    if complete and not any(all((directory / f).is_file() for f in pipeline_files(v)) for v in (PREFERRED_VARIANT, None)):
        return None
    return HubSnapshot(repo_id, directory.name, directory)


def _refuse_hub_answer(repo_id: str, revision: str, exc: Exception) -> None:
    """A hub that answered "no such repository / revision / access" ends the start-up; a network failure does not."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, RevisionNotFoundError):
        raise EngineUnavailable(f"--revision {revision}: {repo_id} has no such commit, tag or branch") from exc
    if isinstance(exc, GatedRepoError):
        raise EngineUnavailable(f"model: {repo_id} is gated: accept its licence on huggingface.co and set HF_TOKEN") from exc
    if isinstance(exc, RepositoryNotFoundError):
        raise EngineUnavailable(f"model: {repo_id} is not a model on the Hugging Face hub (or it is private: set HF_TOKEN)") from exc
    logger.warning("model: the Hugging Face hub cannot be reached (%s); looking in the local cache", exc.__class__.__name__)


def _download(repo_id: str, revision: str) -> HubSnapshot | None:
    """Resolve `revision` on the hub and download what the cache lacks; None when the hub cannot be reached."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001
        _refuse_hub_answer(repo_id, revision, exc)
        return None
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    files = [f for f in pipeline_files(download_variant(sizes)) if f in sizes]
    cached = _cached(repo_id, str(info.sha), complete=False)
    missing = [f for f in files if cached is None or not (cached.directory / f).is_file()]
    if missing:
        size = sum(sizes[f] for f in missing)
        logger.info("model: downloading %d files of %s@%s, %.2f GB, into %s", len(missing), repo_id, str(info.sha)[:12], size / 1e9, _cache_dir())
    started = time.perf_counter()
    try:
        directory = Path(snapshot_download(repo_id, revision=info.sha, allow_patterns=files))
    except Exception as exc:  # noqa: BLE001 - the network went away mid-download, the disk filled up, ...
        raise EngineUnavailable(f"model: downloading {repo_id} failed ({exc.__class__.__name__}: {exc}); run again to resume") from exc
    if missing:
        logger.info("model: downloaded in %.0f s", time.perf_counter() - started)
    return HubSnapshot(repo_id, str(info.sha), directory)
