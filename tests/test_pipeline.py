"""The one denoising loop against diffusers' own pipeline, batching, and the real loading path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.base import GenerationRequest
from engines.core.pipeline import make_scheduler
from engines.backends.torch_runners import build_torch_pipeline
from engines.core.numerics import choose_numerics
from engines.models.presets import build_tiny_components
from engines.models.sources import load_components


@pytest.fixture(scope="module")
def tiny_fp32(presets_dir: Path):
    return load_components("tiny", torch.float32, presets_dir)


@pytest.fixture(scope="module")
def ours(tiny_fp32):
    return build_torch_pipeline(tiny_fp32, choose_numerics("cpu", "fp32"))


CASES = [
    pytest.param(1, 0.0, None, id="1-step"),
    pytest.param(3, 0.0, None, id="3-steps"),
    pytest.param(2, 5.0, None, id="guidance-empty-negative"),
    pytest.param(2, 4.0, "blurry", id="guidance-negative-prompt"),
]


@pytest.mark.parametrize(("steps", "guidance", "negative"), CASES)
def test_loop_matches_diffusers_pipeline(tiny_fp32, ours, steps, guidance, negative):
    from diffusers import StableDiffusionXLPipeline

    c = tiny_fp32
    reference = StableDiffusionXLPipeline(
        vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2, tokenizer=c.tokenizer,
        tokenizer_2=c.tokenizer_2, unet=c.unet, scheduler=make_scheduler(c.scheduler_config),
    )
    reference.set_progress_bar_config(disable=True)
    prompts, seeds = ["a red cat", "a blue dog"], [7, 1234]
    expected = reference(
        prompt=prompts,
        negative_prompt=[negative] * 2 if negative else None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=256,
        height=192,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="pt",
    ).images
    got = ours.denoise_and_decode(
        [
            GenerationRequest(prompt=p, negative_prompt=negative or "", num_inference_steps=steps,
                              guidance_scale=guidance, seed=s, width=256, height=192)
            for p, s in zip(prompts, seeds)
        ]
    )
    assert got.shape == expected.shape == (2, 3, 192, 256)
    assert (got - expected).abs().max().item() < 1e-5


def test_each_batch_item_equals_its_image_alone(ours):
    requests = [
        GenerationRequest(prompt=f"prompt {i}", num_inference_steps=2, seed=100 + i, width=256, height=256)
        for i in range(3)
    ]
    batched = ours(requests)
    for request, image in zip(requests, batched):
        alone = ours([request])[0]
        assert (image == alone).all()
    assert not (batched[0] == batched[1]).all(), "different seeds and prompts must give different images"


def test_batch_must_share_a_signature(ours):
    with pytest.raises(ValueError, match="share size"):
        ours([GenerationRequest(prompt="a", width=256), GenerationRequest(prompt="b", width=512)])


def test_tiny_pipeline_saved_to_a_directory_loads_back_the_same(presets_dir: Path, tiny_fp32):
    """The tiny preset goes through the real from_pretrained path: its weights equal the freshly built ones."""
    built = build_tiny_components()
    loaded_from_dir = load_components(str(presets_dir / "tiny-v1"), torch.float32)  # the 'local directory' source
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        fresh, saved = getattr(built, name).state_dict(), getattr(loaded_from_dir, name).state_dict()
        assert fresh.keys() == saved.keys()
        assert all(torch.equal(fresh[k], saved[k]) for k in fresh), name
    assert loaded_from_dir.fingerprint.startswith("sha256:")
    assert loaded_from_dir.tokenizer("a cat").input_ids == built.tokenizer("a cat").input_ids
    assert loaded_from_dir.tokenizer_2.pad_token == "!"


def test_a_directory_that_is_not_a_pipeline_is_refused(tmp_path: Path):
    from engines.base import EngineUnavailable

    with pytest.raises(EngineUnavailable, match="missing unet"):
        load_components(str(tmp_path), torch.float32)


def test_prompt_embedding_cache_skips_the_encoders_and_changes_nothing(tiny_fp32):
    from engines.core.text_encoders import TorchTextEncoders

    c = tiny_fp32
    calls = []
    encoder_2 = c.text_encoder_2
    counting = lambda *args, **kwargs: calls.append(1) or encoder_2(*args, **kwargs)  # noqa: E731
    cached = TorchTextEncoders(c.tokenizer, c.tokenizer_2, c.text_encoder, counting, cache_size=2)
    uncached = TorchTextEncoders(c.tokenizer, c.tokenizer_2, c.text_encoder, encoder_2, split_batch=True, cache_size=0)
    first = cached.encode(["a cat", "a dog"])
    again = cached.encode(["a dog", "a cat"])
    assert len(calls) == 2, "the second call is answered from the cache"
    expected = uncached.encode(["a dog", "a cat"])
    assert torch.equal(again[0], expected[0]) and torch.equal(again[1], expected[1])
    assert torch.equal(first[0][0], again[0][1])
    cached.encode(["a bird"])  # evicts the least recently used ("a dog")
    cached.encode(["a dog"])
    assert len(calls) == 4


IMAGE_TO_IMAGE_CASES = [
    pytest.param(2, 0.5, 0.0, id="2-steps-strength-0.5"),
    pytest.param(4, 0.75, 0.0, id="4-steps-strength-0.75"),
    pytest.param(1, 1.0, 0.0, id="1-step-strength-1"),
    pytest.param(3, 0.7, 4.0, id="guidance-strength-0.7"),
]


@pytest.mark.parametrize(("steps", "strength", "guidance"), IMAGE_TO_IMAGE_CASES)
def test_image_to_image_matches_diffusers_img2img_pipeline(tiny_fp32, ours, steps, strength, guidance):
    """Same components, seeds and strength as StableDiffusionXLImg2ImgPipeline: the encoder's sample,
    the timesteps the strength selects, the noise added for the first one, then the same loop."""
    import numpy as np
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    c = tiny_fp32
    reference = StableDiffusionXLImg2ImgPipeline(
        vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2, tokenizer=c.tokenizer,
        tokenizer_2=c.tokenizer_2, unet=c.unet, scheduler=make_scheduler(c.scheduler_config),
    )
    reference.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (192, 256, 3), dtype=np.uint8) for _ in range(2)]
    prompts, seeds = ["a red cat", "a blue dog"], [7, 1234]
    expected = reference(
        prompt=prompts,
        image=[Image.fromarray(p) for p in pixels],
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="pt",
    ).images
    got = ours.denoise_and_decode(
        [
            GenerationRequest(prompt=p, num_inference_steps=steps, guidance_scale=guidance, seed=s, width=256,
                              height=192, image=image, strength=strength)
            for p, s, image in zip(prompts, seeds, pixels)
        ]
    )
    assert got.shape == expected.shape == (2, 3, 192, 256)
    assert (got - expected).abs().max().item() < 1e-5


def test_image_to_image_that_would_run_no_step_is_refused(ours):
    import numpy as np

    image = np.zeros((256, 256, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="at least 1"):
        ours([GenerationRequest(prompt="a", num_inference_steps=1, strength=0.5, width=256, height=256, image=image)])


def test_image_to_image_batch_items_equal_their_images_alone(ours):
    import numpy as np

    rng = np.random.default_rng(1)
    requests = [
        GenerationRequest(prompt=f"prompt {i}", num_inference_steps=2, seed=50 + i, width=256, height=256,
                          image=rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), strength=0.5)
        for i in range(2)
    ]
    batched = ours(requests)
    for request, image in zip(requests, batched):
        assert (image == ours([request])[0]).all()
