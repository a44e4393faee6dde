"""Lay out a Hugging Face cache as a download of stabilityai/sdxl-turbo leaves it, with the tiny model inside.

The layout follows huggingface_hub's documented cache (https://huggingface.co/docs/hub/local-cache):
`models--<org>--<name>/blobs/<hash>` holds each file once (LFS files named by their SHA-256, the
others by their git blob SHA-1), `snapshots/<commit>/<path>` are relative symlinks to those blobs,
and `refs/<branch or tag>` holds the commit. tests/test_hub_cache.py checks it with huggingface_hub's
own `scan_cache_dir`.
"""

from __future__ import annotations

import copy as copy_lib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from engines.models.hub import WEIGHT_STEMS, weight_file

# As in the real repository's model_index.json (diffusers 0.24 wrote it).
MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.24.0.dev0",
    "feature_extractor": [None, None],
    "force_zeros_for_empty_prompt": True,
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def copy_module(module: torch.nn.Module, dtype: torch.dtype, zeros: bool = False) -> torch.nn.Module:
    copy = copy_lib.deepcopy(module).to(dtype)
    if zeros:
        with torch.no_grad():
            for parameter in copy.parameters():
                parameter.zero_()
    return copy


def _tokenizer_files(tokenizer, pad_token: str) -> dict[str, bytes]:
    """The slow-tokenizer files the real repository ships (vocab.json, merges.txt), not tokenizer.json."""
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token, "unk_token": "<|endoftext|>"}
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace"}
    return {
        "vocab.json": json.dumps(tokenizer.get_vocab()).encode(),
        "merges.txt": b"#version: 0.2\n",
        "special_tokens_map.json": json.dumps(special).encode(),
        "tokenizer_config.json": json.dumps(config).encode(),
    }


def tiny_pipeline_files(variants: tuple[str | None, ...] = ("fp16",), altered: str | None = None) -> dict[str, bytes]:
    """The tiny model as the real repository's files: {relative path: bytes}. Weights once per variant
    (fp16 files in float16); `altered` names a variant whose weights are all zeros, to tell files apart."""
    from engines.models.presets import build_byte_level_tokenizer, build_tiny_components

    components = build_tiny_components()
    files: dict[str, bytes] = {"model_index.json": json.dumps(MODEL_INDEX, indent=2).encode()}
    files["scheduler/scheduler_config.json"] = json.dumps(components.scheduler_config).encode()
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        for file, data in _tokenizer_files(build_byte_level_tokenizer(pad), pad).items():
            files[f"{name}/{file}"] = data
    with tempfile.TemporaryDirectory() as scratch:
        for component in WEIGHT_STEMS:
            module = getattr(components, component)
            for variant in variants:
                copy = copy_module(module, torch.float16 if variant == "fp16" else torch.float32, zeros=variant == altered)
                target = Path(scratch) / component / str(variant)
                copy.save_pretrained(target, variant=variant)
                relative = weight_file(component, variant)
                files[relative] = (target / Path(relative).name).read_bytes()
                files[f"{component}/config.json"] = (target / "config.json").read_bytes()
    return files


def write_directory(directory: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_bytes(data)
    return directory


def _blob_name(relative: str, data: bytes) -> str:
    if relative.endswith(".safetensors"):  # LFS: the blob is named by the file's SHA-256
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git: the blob's SHA-1


def write_hub_snapshot(hub_cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> Path:
    """One commit of `repo_id` in the cache at `hub_cache` ($HF_HOME/hub), named by `refs`; returns the snapshot directory."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for relative, data in files.items():
        blob = repo / "blobs" / _blob_name(relative, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot
