"""What the peers start from and are checked against, made in our environment from our weights.

`prepare_reference` (run in a process of its own: it loads the model) writes two things:
- the checkpoint the peers export from: our components saved as a diffusers directory, in the
  layout the peers' older transformers reads (see `write_checkpoint`);
- reference.npz: inputs the peers compute on (a prompt, a seed, fixed UNet inputs) and our outputs
  for them, from the modules the baseline runs (diffusers' SDXL pipeline over our weights, float32):
  the prompt's embeddings, the UNet's output and the image.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.baseline import build_baseline_pipeline
from engines.core.hardware import usable_cpu_count
from engines.core.sdxl import latent_shape, time_ids
from engines.models.components import SDXLComponents
from engines.models.presets import save_pipeline
from engines.models.sources import load_components

logger = logging.getLogger(__name__)

CHECKPOINT_STAMP = "peer-checkpoint.json"
REFERENCE_FILE = "reference.npz"
REFERENCE_STAMP = "reference.json"
PROMPT = "a red fox asleep in fresh snow, morning light"
SEED = 7
TIMESTEP = 999  # the one step SDXL Turbo takes (trailing spacing); an int64, as the exported UNet takes it
CLIP_PREFIX = "text_model."
CLIP_PROJECTION = "text_projection."


@dataclass(frozen=True)
class ReferenceJob:
    model: str
    fingerprint: str
    size: int
    directory: Path  # holds checkpoint/, reference.npz and their stamps
    presets_dir: Path | None = None
    log_level: str = "INFO"

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoint"

    @property
    def stamp(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "size": self.size, "prompt": PROMPT, "seed": SEED}


def reference_is_current(job: ReferenceJob) -> bool:
    """Both files were made from this model (and, for the reference, at this size): nothing to do."""
    checkpoint = read_json(job.checkpoint / CHECKPOINT_STAMP) == {"fingerprint": job.fingerprint}
    return checkpoint and read_json(job.directory / REFERENCE_STAMP) == job.stamp


def prepare_reference(job: ReferenceJob) -> dict[str, Any]:
    """Load the model in float32, compute reference.npz, then write the checkpoint unless current."""
    logging.basicConfig(level=job.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(usable_cpu_count())
    components = load_components(job.model, torch.float32, job.presets_dir)
    with torch.inference_mode():
        outputs = reference_outputs(components, job.size)
    np.savez(job.directory / REFERENCE_FILE, **outputs)
    (job.directory / REFERENCE_STAMP).write_text(json.dumps(job.stamp))
    if read_json(job.checkpoint / CHECKPOINT_STAMP) != {"fingerprint": job.fingerprint}:
        logger.info("peers: saving %s as a diffusers directory in %s", job.model, job.checkpoint)
        shutil.rmtree(job.checkpoint, ignore_errors=True)
        write_checkpoint(components, job.checkpoint)
        (job.checkpoint / CHECKPOINT_STAMP).write_text(json.dumps({"fingerprint": job.fingerprint}))
    return {"checkpoint": str(job.checkpoint), "reference": str(job.directory / REFERENCE_FILE)}


def write_checkpoint(components: SDXLComponents, directory: Path) -> None:
    """Our components as a diffusers directory the peers read as we do, in float16 (in place).

    float16 is what the peers' exports hold anyway, and what a real SDXL Turbo checkpoint ships: the
    exporter then loads half the bytes (7 GB for SDXL, not 14, on a 24 GB machine) and converts them
    as it converts the real model's.

    transformers 5.24 saves CLIPTextModel's weights without the `text_model.` prefix; the peers'
    transformers 5.5 looks only for the prefixed names and, finding none, silently starts that encoder
    from random weights. Every key of both text encoders gets the prefix (the projection of the second
    keeps its own name), which is the layout both versions read."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    for module in (components.text_encoder, components.text_encoder_2, components.unet, components.vae):
        module.half()
    save_pipeline(components, directory)
    for folder in ("text_encoder", "text_encoder_2"):
        for path in sorted((directory / folder).glob("*.safetensors")):
            with safe_open(path, "pt") as stored:
                if all(_clip_key(key) == key for key in stored.keys()):
                    continue  # already so (the second encoder): not read
            save_file({_clip_key(key): tensor for key, tensor in load_file(path).items()}, path, metadata={"format": "pt"})
        index = directory / folder / "model.safetensors.index.json"
        if index.is_file():
            content = json.loads(index.read_text())
            content["weight_map"] = {_clip_key(key): file for key, file in content["weight_map"].items()}
            index.write_text(json.dumps(content, indent=2))


def _clip_key(key: str) -> str:
    return key if key.startswith((CLIP_PREFIX, CLIP_PROJECTION)) else CLIP_PREFIX + key


def reference_outputs(components: SDXLComponents, size: int) -> dict[str, np.ndarray]:
    """The check's inputs and our outputs for them: the prompt's embeddings as diffusers' SDXL pipeline
    computes them, the UNet on fixed inputs (a seeded sample, those embeddings, one step's timestep),
    and the image for the prompt and seed, 1 step at guidance 0, with torch.Generator(SEED)'s latents."""
    pipe = build_baseline_pipeline(components, torch.device("cpu"))
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, num_images_per_prompt=1, do_classifier_free_guidance=False)
    sample = torch.randn(latent_shape(size, size), generator=torch.Generator().manual_seed(SEED))
    timestep = torch.tensor([TIMESTEP])
    ids = time_ids(size, size)
    unet_output = components.unet(
        sample, timestep, encoder_hidden_states=prompt_embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}
    ).sample
    image = pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, width=size, height=size,
                 generator=torch.Generator().manual_seed(SEED)).images[0]
    return {
        "prompt": np.array(PROMPT),
        "seed": np.array(SEED),
        "sample": sample.numpy(),
        "timestep": timestep.numpy(),
        "time_ids": ids.numpy(),
        "prompt_embeds": prompt_embeds.numpy(),
        "pooled_prompt_embeds": pooled.numpy(),
        "unet_output": unet_output.numpy(),
        "image": np.asarray(image),
    }


def read_json(path: Path) -> Any:
    """A stamp's content; None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
