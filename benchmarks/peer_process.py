"""One peer's process, run by the peers' own interpreter (.venv-peers, constraints/peers.txt), never ours.

    .venv-peers/bin/python -m benchmarks.peer_process export CHECKPOINT OUT
    .venv-peers/bin/python -m benchmarks.peer_process run PEER MODEL_DIR REFERENCE OUT --size 512 --warmup 1 --repeats 3

`export` turns our checkpoint (a diffusers directory) into OpenVINO IR with optimum-intel's exporter:
OUT/fp16 and OUT/int8. `run` loads one peer as its documentation says, with static shapes, computes
what the weight check compares (benchmarks/peers.py) into OUT/check.npz, then times images: the first
(the reference's prompt and seed) is the warm-up, then each timed one has a new prompt and seed;
prompt in, PNG bytes out, as the baseline. Either prints one JSON object on stdout; whatever the
libraries print goes to stderr.

Only the standard library, numpy, Pillow and the peers' libraries are imported here: this module runs
beside transformers 5.5, where the project's own code does not.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import resource
import shutil
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

IR_FILE = "openvino_model.xml"
LIBRARIES = ("optimum-intel", "openvino", "openvino-genai", "openvino-tokenizers", "nncf", "transformers", "diffusers", "torch")

ImageFn = Callable[[str, int], np.ndarray]  # (prompt, seed) -> [H, W, 3] uint8
Prepared = tuple[dict[str, np.ndarray], float, ImageFn]  # what the check compares, load seconds, one image


def export(checkpoint: Path, out: Path) -> dict[str, Any]:
    """OUT/fp16: the exporter with `--weight-format fp16` (every weight fp16, the tokenizers converted
    for GenAI). OUT/int8: the same files but the UNet's weights compressed to int8, as the exporter does
    by default to any part over 1B parameters (nncf int8_asym per channel; SDXL's UNet is the one such
    part); the tiny model's UNet gets the same, so both sizes take one path."""
    import nncf
    import openvino as ov
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    started = time.perf_counter()
    main_export(str(checkpoint), output=out / "fp16", task="text-to-image", ov_config=OVConfig(dtype="fp16"),
                convert_tokenizer=True)
    seconds = {"fp16": time.perf_counter() - started}
    started = time.perf_counter()
    shutil.copytree(out / "fp16", out / "int8", copy_function=os.link)  # hard links: no second copy of the weights
    unet = out / "int8" / "unet" / IR_FILE
    compressed = nncf.compress_weights(ov.Core().read_model(unet), mode=nncf.CompressWeightsMode.INT8_ASYM)
    for linked in (unet, unet.with_suffix(".bin")):
        linked.unlink()  # never write through a hard link into the fp16 files
    ov.save_model(compressed, unet, compress_to_fp16=False)
    seconds["int8"] = time.perf_counter() - started
    return {"seconds": seconds, "libraries": library_versions()}


def openvino_genai(model_dir: Path, size: int, reference: dict[str, np.ndarray]) -> Prepared:
    """OpenVINO GenAI's Text2ImagePipeline, reshaped to one image of size x size at guidance 0 before it
    compiles. The check runs GenAI's own text encoder and UNet classes on the same files, each freed
    before the next loads, and before the pipeline: never two copies of a part in memory."""
    import openvino as ov
    import openvino_genai as genai

    prompt = str(reference["prompt"])
    hidden = []
    for cls, folder in ((genai.CLIPTextModel, "text_encoder"), (genai.CLIPTextModelWithProjection, "text_encoder_2")):
        encoder = cls(model_dir / folder)
        encoder.reshape(1)
        encoder.compile("CPU")
        pooled = encoder.infer(prompt, "", False).data.copy()
        # As GenAI's SDXL pipeline reads it: the penultimate layer's hidden states (diffusers' hidden_states[-2]).
        hidden.append(encoder.get_output_tensor(encoder.get_config().num_hidden_layers + 1).data.copy())
        del encoder
    unet = genai.UNet2DConditionModel(model_dir / "unet")
    unet.reshape(1, size, size, hidden[0].shape[1])
    unet.compile("CPU")
    inputs = unet_inputs(reference)
    for name in ("encoder_hidden_states", "text_embeds", "time_ids"):
        unet.set_hidden_states(name, ov.Tensor(inputs[name]))
    unet_output = unet.infer(ov.Tensor(inputs["sample"]), ov.Tensor(inputs["timestep"])).data.copy()
    del unet
    gc.collect()
    checked = {"prompt_embeds": np.concatenate(hidden, axis=-1), "pooled_prompt_embeds": pooled, "unet_output": unet_output}

    started = time.perf_counter()
    pipe = genai.Text2ImagePipeline(model_dir)
    pipe.reshape(1, size, size, 0.0)
    pipe.compile("CPU")
    load_seconds = time.perf_counter() - started

    def image(prompt: str, seed: int) -> np.ndarray:
        # TorchGenerator draws the initial latents as torch.Generator(seed) does: the same as ours.
        tensor = pipe.generate(prompt, num_inference_steps=1, guidance_scale=0.0, width=size, height=size,
                               generator=genai.TorchGenerator(seed))
        return tensor.data[0].copy()  # the tensor's memory is reused by the next call

    return checked, load_seconds, image


def optimum_intel(model_dir: Path, size: int, reference: dict[str, np.ndarray]) -> Prepared:
    """optimum-intel's OVStableDiffusionXLPipeline (what FastSD CPU builds on), reshaped to static
    shapes before it compiles. Its reshape() sizes the UNet for classifier-free guidance (batch 2),
    which guidance 0 never runs and which then fails: the UNet is reshaped to batch 1 here. The check
    runs the pipeline's own text encoders and UNet."""
    import torch
    from optimum.intel import OVStableDiffusionXLPipeline

    started = time.perf_counter()
    pipe = OVStableDiffusionXLPipeline.from_pretrained(model_dir, compile=False)
    pipe.reshape(batch_size=1, height=size, width=size, num_images_per_prompt=1)
    unet = pipe.unet.model
    unet.reshape({tensor: [1, *tensor.get_partial_shape()[1:]] for tensor in unet.inputs})
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)
    load_seconds = time.perf_counter() - started

    prompt = str(reference["prompt"])
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(prompt, num_images_per_prompt=1, do_classifier_free_guidance=False)
    unet_output = pipe.unet(**unet_inputs(reference))[0]
    checked = {"prompt_embeds": np.asarray(prompt_embeds), "pooled_prompt_embeds": np.asarray(pooled),
               "unet_output": np.asarray(unet_output)}

    def image(prompt: str, seed: int) -> np.ndarray:
        result = pipe(prompt, num_inference_steps=1, guidance_scale=0.0, width=size, height=size,
                      generator=torch.Generator().manual_seed(seed))
        return np.asarray(result.images[0])

    return checked, load_seconds, image


def unet_inputs(reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The UNet's fixed inputs for the check, by the names of the exported UNet's inputs: our prompt
    embeddings, so that the UNet is checked alone."""
    return {
        "sample": reference["sample"],
        "timestep": reference["timestep"],
        "encoder_hidden_states": reference["prompt_embeds"],
        "text_embeds": reference["pooled_prompt_embeds"],
        "time_ids": reference["time_ids"],
    }


PEERS: dict[str, Callable[[Path, int, dict[str, np.ndarray]], Prepared]] = {
    "openvino-genai": openvino_genai,
    "optimum-intel": optimum_intel,
}


def run(peer: str, model_dir: Path, reference_file: Path, out: Path, size: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Check outputs into OUT/check.npz (with the warm-up image), then `repeats` timed images."""
    from PIL import Image

    with np.load(reference_file) as stored:
        reference = {name: stored[name] for name in stored.files}
    checked, load_seconds, image = PEERS[peer](model_dir, size, reference)

    def png(prompt: str, seed: int) -> np.ndarray:
        pixels = image(prompt, seed)
        Image.fromarray(pixels).save(io.BytesIO(), format="PNG")
        return pixels

    started = time.perf_counter()
    checked["image"] = png(str(reference["prompt"]), int(reference["seed"]))
    first_image_seconds = time.perf_counter() - started
    for i in range(warmup - 1):
        png(f"peer warm-up {i}", 1000 + i)
    runs = []
    for i in range(repeats):
        started = time.perf_counter()
        png(f"peer request {i}", i)
        runs.append(time.perf_counter() - started)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "check.npz", **checked)
    return {
        "load_seconds": load_seconds,
        "first_image_seconds": first_image_seconds,
        "seconds": {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "n": len(runs), "runs": runs},
        "image_shape": list(checked["image"].shape),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "compute_precision": openvino_precision(),
        "libraries": library_versions(),
    }


def openvino_precision() -> str:
    """What OpenVINO computes in on this CPU when nobody asks (bf16 where the CPU has it, else f32):
    both peers leave it at that."""
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def library_versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in LIBRARIES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_process", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser("export", help="our checkpoint -> OUT/fp16 and OUT/int8 (OpenVINO IR)")
    exporting.add_argument("checkpoint", type=Path)
    exporting.add_argument("out", type=Path)
    running = commands.add_parser("run", help="check one peer against the reference, then time it")
    running.add_argument("peer", choices=PEERS)
    running.add_argument("model_dir", type=Path)
    running.add_argument("reference", type=Path)
    running.add_argument("out", type=Path)
    running.add_argument("--size", type=int, required=True)
    running.add_argument("--warmup", type=int, default=1)
    running.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    # Our JSON alone on stdout: the libraries' own output (C++ included) goes to stderr.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.command == "export":
        result = export(args.checkpoint, args.out)
    else:
        result = run(args.peer, args.model_dir, args.reference, args.out, args.size, args.warmup, args.repeats)
    with os.fdopen(result_fd, "w") as stdout:
        stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
