"""Component specs: the one place shapes, axes and profiles live."""

from __future__ import annotations

import inspect

import pytest
import torch

from engines.core.specs import UNET, VAE_DECODER, BuildRange, ModelDims
from engines.core.pipeline import UNetRunner, VAEDecoderRunner
from engines.models.presets import architecture

TINY = ModelDims(hidden_size=64, pooled_size=32, upsample_factor=2)


def test_dims_of_the_real_sdxl_turbo_architecture() -> None:
    dims = ModelDims.from_unet_config(architecture()["unet"])
    assert dims == ModelDims(hidden_size=2048, pooled_size=1280, upsample_factor=4, latent_channels=4)
    assert dims.size_multiple == 32  # 512, 768 and 1024 are fine; 520 is not


def test_dims_round_trip_through_json() -> None:
    assert ModelDims.from_json(TINY.to_json()) == TINY


def test_input_order_is_the_runners_signature() -> None:
    """Runners are called positionally by the loop; the specs name the same arguments in the same order."""
    specs = TINY.specs()
    unet_args = list(inspect.signature(UNetRunner.__call__).parameters)[1:]
    vae_args = list(inspect.signature(VAEDecoderRunner.__call__).parameters)[1:]
    assert specs[UNET].input_names == unet_args
    assert specs[VAE_DECODER].input_names == vae_args


def test_shapes_for_a_request() -> None:
    specs = TINY.specs()
    assert specs[UNET].shapes(batch=2, width=768, height=512) == {
        "sample": (2, 4, 64, 96),
        "timestep": (2,),
        "encoder_hidden_states": (2, 77, 64),
        "text_embeds": (2, 32),
        "time_ids": (2, 6),
        "noise_pred": (2, 4, 64, 96),
    }
    assert specs[VAE_DECODER].shapes(batch=3, width=256, height=384) == {
        "latents": (3, 4, 48, 32),
        "images": (3, 3, 384, 256),
    }


def test_dynamic_axes_are_batch_and_sizes() -> None:
    axes = TINY.specs()[UNET].dynamic_axes()
    assert axes["sample"] == {0: "batch", 2: "latent_height", 3: "latent_width"}
    assert axes["encoder_hidden_states"] == {0: "batch"}
    assert TINY.specs()[VAE_DECODER].dynamic_axes()["images"] == {0: "batch", 2: "height", 3: "width"}


def test_profile_for_sizes_and_a_batch_range() -> None:
    build_range = BuildRange.for_sizes(((768, 768), (512, 512)), min_batch=1, max_batch=4)
    unet = TINY.specs()[UNET].profile(build_range)
    assert set(unet) == {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"}
    # min: smallest batch and size; opt: one 512x512 image; max: guidance doubles the largest batch.
    assert unet["sample"] == ((1, 4, 64, 64), (1, 4, 64, 64), (8, 4, 96, 96))
    assert unet["timestep"] == ((1,), (1,), (8,))
    vae = TINY.specs()[VAE_DECODER].profile(build_range)
    assert vae["latents"] == ((1, 4, 64, 64), (1, 4, 64, 64), (4, 4, 96, 96))


def test_size_range_optimises_for_512_where_it_can() -> None:
    assert BuildRange.for_size_range(256, 1024).opt_size == (512, 512)
    assert BuildRange.for_size_range(768, 1024).opt_size == (768, 768)
    assert BuildRange.for_size_range(256, 384).opt_size == (384, 384)


def test_limits_name_what_an_engine_was_built_for() -> None:
    limits = BuildRange.for_sizes(((512, 512), (768, 512)), max_batch=2).limits(TINY.size_multiple)
    assert limits.supports(768, 512) and not limits.supports(512, 768)
    assert limits.max_batch == 2 and limits.size_multiple == 16
    assert limits.describe_sizes() == "512x512, 768x512"
    ranged = BuildRange.for_size_range(256, 768).limits(32)
    assert ranged.sizes is None and (ranged.min_size, ranged.max_size) == (256, 768)
    assert ranged.supports(256, 736) and not ranged.supports(1024, 512)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BuildRange.for_sizes(((512, 512),), min_batch=0, max_batch=1), "batch"),
        (lambda: BuildRange.for_sizes(((512, 512),), min_batch=3, max_batch=2), "batch"),
        (lambda: BuildRange.for_sizes(((510, 512),)), "multiple of 8"),
        (lambda: BuildRange.for_sizes(()), "at least one size"),
        (lambda: BuildRange.for_size_range(768, 512), "above the maximum"),
    ],
)
def test_bad_ranges_are_refused_with_the_rule(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_a_model_with_a_larger_multiple_refuses_sizes_it_cannot_trace() -> None:
    build_range = BuildRange.for_sizes(((520, 520),))  # fine for the VAE's factor of 8
    with pytest.raises(ValueError, match="multiple of 16"):
        build_range.check(TINY.size_multiple)


def test_build_range_round_trips_through_json() -> None:
    for build_range in (BuildRange.for_sizes(((512, 512), (768, 768)), 1, 4), BuildRange.for_size_range(256, 1024)):
        assert BuildRange.from_json(build_range.to_json()) == build_range


def test_sample_inputs_have_the_spec_shapes_and_plausible_values() -> None:
    spec = TINY.specs()[UNET]
    samples = spec.sample_inputs(batch=2, width=384, height=256)
    shapes = spec.shapes(batch=2, width=384, height=256)
    assert {name: tuple(t.shape) for name, t in samples.items()} == {n: shapes[n] for n in spec.input_names}
    assert all(t.dtype == torch.float32 for t in samples.values())
    assert samples["time_ids"][1].tolist() == [256, 384, 0, 0, 256, 384]
    assert samples["timestep"].tolist() == [999.0, 999.0]
    again = spec.sample_inputs(batch=2, width=384, height=256)
    assert torch.equal(samples["sample"], again["sample"])  # seeded: checks compare like with like
