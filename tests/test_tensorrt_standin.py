"""Our TensorRT code against the stand-in's TensorRT 11 rules (tests/fake_tensorrt.py), on the CPU.

A tiny build (fp16 UNet graph, fp32 VAE graphs) is made once with the stand-in, then loaded the way
the service loads it: LoadedPlans, execution contexts with user-managed memory on one shared block,
the runners binding CPU tensors whose addresses the stand-in reads and writes. Each test names the
rule it holds our code to; each was seen to fail with the rule broken in our code.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch

from engines.base import EngineError
from engines.build.builder import BuildRequest, build
from engines.build.tensorrt_plans import inspector_type
from engines.backends import tensorrt_engine
from engines.backends.tensorrt_engine import ALIGNMENT, LoadedPlans
from engines.core.hardware import GpuInfo
from engines.core.specs import UNET, VAE_DECODER, BuildRange, ModelDims
from engines.manifest import Manifest
from tests import fake_tensorrt

GPU = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
RANGE = BuildRange.for_sizes(((512, 512), (768, 512)), 1, 2)
STREAM = 0x5EED  # an integer CUDA stream handle, as `torch.cuda.Stream().cuda_stream` gives


@pytest.fixture(scope="module")
def trt_build(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> Iterator[tuple[Path, object]]:
    from engines.build import builder

    with pytest.MonkeyPatch.context() as patch:
        module = fake_tensorrt.make_module()
        patch.setitem(sys.modules, "tensorrt", module)
        patch.setattr(builder, "cuda_gpu", lambda: GPU)
        out = tmp_path_factory.mktemp("standin-engines")
        build(BuildRequest(model="tiny", out=out, build_range=RANGE, presets_dir=presets_dir))
        yield out, module


@pytest.fixture
def trt(trt_build, monkeypatch):
    _, module = trt_build
    module.options.errors.clear()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def load(out: Path, *names: str, stream: int = STREAM) -> LoadedPlans:
    manifest = Manifest.read(out)
    plans = {name: (out / f"{name}.plan").read_bytes() for name in names}
    return LoadedPlans(plans, manifest.dims.specs(), device="cpu", stream_handle=lambda: stream)


def specs(out: Path):
    return Manifest.read(out).dims.specs()


# --- what the build reads back -------------------------------------------------------------------


def test_the_read_back_finds_the_layer_types_of_a_plan_with_layers(trt_build) -> None:
    out, _ = trt_build
    manifest = Manifest.read(out)
    assert manifest.components[UNET].plan.details["layer_dtypes"] == {"HALF": 2}
    assert manifest.components[VAE_DECODER].plan.details["layer_dtypes"] == {"FLOAT": 2}


@pytest.mark.parametrize(
    ("described", "dtype"),
    [
        ("Float", "FLOAT"), ("Half", "HALF"), ("BFloat16", "BF16"), ("Int8", "INT8"), ("FP8", "FP8"),
        ("Int32", "INT32"), ("Int64", "INT64"), ("Bool", "BOOL"), ("UInt8", "UINT8"), ("Int4", "INT4"),
        ("FP4", "FP4"), ("E8M0", "E8M0"),
        ("Row major linear FP32 format (kLINEAR)", "FLOAT"), ("Channel major FP16 format where channel % 8 == 0", "HALF"),
        ("Row major linear BF16 format (kLINEAR)", "BF16"), ("N/A", None),
    ],
)
def test_every_inspector_type_name_is_read_exactly(described: str, dtype: str | None) -> None:
    """11.x "Datatype" names and 10.x "Format/Datatype" descriptions; "BFloat16" is not FLOAT."""
    assert inspector_type(described) == dtype


def test_the_10x_inspector_key_is_still_read(trt, tmp_path: Path, onnx_engines: Path) -> None:
    from engines.build.tensorrt_plans import _layer_output_types

    layers = [{"Outputs": [{"Format/Datatype": "Row major linear FP32"}]}, {"Outputs": [{"Datatype": "Half", "Format": "x"}]}]
    assert list(_layer_output_types(layers)) == ["FLOAT", "HALF"]


# --- execution contexts, user-managed memory, the shared block ---------------------------------------


def test_loaded_plans_run_on_user_managed_memory_in_one_block(trt, trt_build) -> None:
    out, _ = trt_build
    plans = load(out, UNET, VAE_DECODER)
    contexts = trt.options.calls["contexts"][-2:]
    assert all(c.strategy is trt.ExecutionContextAllocationStrategy.USER_MANAGED for c in contexts)
    assert {c.memory for c in contexts} == {(plans.block.memory.data_ptr(), fake_tensorrt.DEVICE_MEMORY)}
    assert plans.block.memory.data_ptr() % ALIGNMENT == 0
    spec = specs(out)[VAE_DECODER]
    (latents,) = spec.sample_inputs(batch=2, width=768, height=512).values()
    images = plans.runners[VAE_DECODER](latents)
    assert images.shape == (2, 3, 512, 768) and images.dtype == torch.float32
    assert contexts[1].launches == [STREAM]
    assert trt.options.errors == []


def test_the_unet_plan_runs_the_fp16_graph_on_the_bound_memory(trt, trt_build) -> None:
    """The stand-in runs the fp16 graph itself: a wrong dtype or address gives another answer."""
    out, _ = trt_build
    plans = load(out, UNET)
    spec = specs(out)[UNET]
    samples = spec.sample_inputs(batch=2, width=512, height=512)
    noise = plans.runners[UNET](*samples.values())
    again = plans.runners[UNET](*samples.values())
    assert noise.shape == samples["sample"].shape and torch.isfinite(noise).all()
    assert torch.equal(noise, again) and noise.abs().sum() > 0


def test_memory_too_small_for_the_engine_is_refused(trt, trt_build, monkeypatch) -> None:
    """pyCoreDoc.h set_device_memory: the size must be at least device_memory_size_v2."""
    out, _ = trt_build
    real = tensorrt_engine.SharedBlock.__init__
    monkeypatch.setattr(tensorrt_engine.SharedBlock, "__init__", lambda self, size, device: real(self, size // 2, device))
    plans = load(out, VAE_DECODER)
    (latents,) = specs(out)[VAE_DECODER].sample_inputs(batch=1, width=512, height=512).values()
    with pytest.raises(EngineError, match="TensorRT execution failed"):
        plans.runners[VAE_DECODER](latents)
    assert any("setDeviceMemoryV2" in error for error in trt.options.errors)


def test_a_shape_outside_the_profile_is_refused_by_set_input_shape(trt, trt_build) -> None:
    out, _ = trt_build
    plans = load(out, VAE_DECODER)
    (latents,) = specs(out)[VAE_DECODER].sample_inputs(batch=3, width=512, height=512).values()
    with pytest.raises(EngineError, match=r"latents shaped \(3, 4, 64, 64\) is outside the plan's profile"):
        plans.runners[VAE_DECODER](latents)


def test_a_misaligned_tensor_address_is_refused(trt, trt_build, monkeypatch) -> None:
    """NvInferRuntime.h setTensorAddress: 256-byte alignment, so `aligned` must copy a view that lacks it."""
    out, _ = trt_build
    plans = load(out, VAE_DECODER)
    storage = torch.zeros(1 * 4 * 64 * 64 + 1)
    view = storage[1:].view(1, 4, 64, 64)
    assert view.data_ptr() % ALIGNMENT
    plans.runners[VAE_DECODER](view)  # copied to an aligned tensor by the runner
    monkeypatch.setattr(tensorrt_engine, "aligned", lambda tensor: tensor)  # the runner's rule broken
    with pytest.raises(EngineError, match="refused the address of latents"):
        plans.runners[VAE_DECODER](view)


def test_enqueue_takes_an_integer_stream_handle_not_a_stream_object(trt, trt_build) -> None:
    """pyCore.cpp execute_async_v3(size_t stream_handle): a torch.cuda.Stream object is a TypeError."""
    out, _ = trt_build

    class CudaStream:  # what torch.cuda.Stream is to pybind11: an object, its handle in .cuda_stream
        cuda_stream = STREAM

    plans = load(out, VAE_DECODER, stream=CudaStream())  # type: ignore[arg-type]
    (latents,) = specs(out)[VAE_DECODER].sample_inputs(batch=1, width=512, height=512).values()
    with pytest.raises(TypeError, match="incompatible function arguments"):
        plans.runners[VAE_DECODER](latents)


def test_the_runner_asks_for_the_integer_handle_of_torchs_stream() -> None:
    """The default stream_handle gives `.cuda_stream` (an int), never the stream object."""
    import inspect

    source = inspect.getsource(tensorrt_engine)
    # TensorRTRunner's and LoadedPlans' defaults, and the CUDA graph capture: each the handle, never the stream
    assert source.count("current_stream()") == source.count("current_stream().cuda_stream") >= 3
    assert "execute_async_v3(stream)" in source


def test_a_second_concurrent_caller_of_the_shared_block_is_an_error(trt, trt_build) -> None:
    out, _ = trt_build
    plans = load(out, VAE_DECODER)
    (latents,) = specs(out)[VAE_DECODER].sample_inputs(batch=1, width=512, height=512).values()
    entered, release = threading.Event(), threading.Event()
    context = trt.options.calls["contexts"][-1]
    real_execute = type(context).execute_async_v3

    def slow_execute(self, stream_handle):
        entered.set()
        release.wait(10)
        return real_execute(self, stream_handle)

    type(context).execute_async_v3 = slow_execute
    try:
        first = threading.Thread(target=plans.runners[VAE_DECODER], args=(latents,))
        first.start()
        assert entered.wait(10)
        with pytest.raises(EngineError, match="share one device memory block: a second call came while one runs"):
            plans.runners[VAE_DECODER](latents)
        release.set()
        first.join(10)
    finally:
        type(context).execute_async_v3 = real_execute
        release.set()


def test_a_call_on_another_stream_is_an_error(trt, trt_build) -> None:
    out, _ = trt_build
    streams = iter([STREAM, STREAM + 1])
    manifest = Manifest.read(out)
    plans = LoadedPlans({VAE_DECODER: (out / "vae_decoder.plan").read_bytes()}, manifest.dims.specs(), "cpu", lambda: next(streams))
    (latents,) = specs(out)[VAE_DECODER].sample_inputs(batch=1, width=512, height=512).values()
    plans.runners[VAE_DECODER](latents)
    with pytest.raises(EngineError, match="the block is in use on stream 0x5eed"):
        plans.runners[VAE_DECODER](latents)


# --- the builder's side of the rules -------------------------------------------------------------------


def test_set_shape_refuses_min_above_opt(trt) -> None:
    """pyCoreDoc.h IOptimizationProfile.set_shape: 0 <= min[i] <= opt[i] <= max[i]."""
    profile = trt.Builder(trt.Logger()).create_optimization_profile()
    profile.set_shape("sample", (1, 4, 64, 64), (1, 4, 64, 64), (2, 4, 96, 96))
    with pytest.raises(RuntimeError, match="inconsistent with other shapes"):
        profile.set_shape("sample", (1, 4, 96, 96), (1, 4, 64, 64), (2, 4, 96, 96))


def test_our_profiles_keep_min_opt_max_in_order() -> None:
    """Every profile the specs make passes set_shape's rule, including a size range whose opt is clamped."""
    for build_range in (RANGE, BuildRange.for_size_range(256, 1024, 1, 4), BuildRange.for_sizes(((768, 768),), 2, 2)):
        for spec in ModelDims(hidden_size=64, pooled_size=32, upsample_factor=2).specs().values():
            for smallest, usual, largest in spec.profile(build_range).values():
                assert all(a <= b <= c for a, b, c in zip(smallest, usual, largest)), (spec.name, build_range)


def test_a_graph_whose_external_data_is_missing_does_not_parse(trt, tmp_path: Path, onnx_engines: Path) -> None:
    """pyOnnxDoc.h parse_from_file: externally stored weights are read from beside the model."""
    import onnx

    from engines.build.onnx_export import EXTERNAL_DATA_FILE
    from engines.build.tensorrt_plans import PlanBuildError, build_plan

    graph = tmp_path / "unet"
    graph.mkdir()
    # As export_onnx saves a graph past 2 GB: its weights in one file beside it.
    onnx.save_model(onnx.load(str(onnx_engines / "unet" / "model.onnx")), str(graph / "model.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True, location=EXTERNAL_DATA_FILE, size_threshold=1024)
    profile = specs(onnx_engines)[UNET].profile(RANGE)
    build_plan(graph / "model.onnx", tmp_path / "unet.plan", profile, tmp_path / "timing.cache")  # parses
    (graph / EXTERNAL_DATA_FILE).unlink()
    with pytest.raises(PlanBuildError, match="could not parse"):
        build_plan(graph / "model.onnx", tmp_path / "unet.plan", profile, tmp_path / "timing.cache")
    assert any("external data" in error for error in trt.options.errors)


def test_an_fp32_build_clears_tf32_and_is_named_fp32(trt, tmp_path: Path, onnx_engines: Path) -> None:
    """pyCoreDoc.h BuilderFlag.TF32: "Enabled by default"; an fp32 plan must clear it."""
    from engines.build.tensorrt_plans import build_plan

    profile = specs(onnx_engines)[VAE_DECODER].profile(RANGE)
    facts = build_plan(onnx_engines / "vae_decoder" / "model.onnx", tmp_path / "vae.plan", profile, tmp_path / "t.cache")
    assert trt.options.calls["config"].get_flag(trt.BuilderFlag.TF32) is False
    assert facts.precision("latents") == "fp32"
    facts = build_plan(onnx_engines / "vae_decoder" / "model.onnx", tmp_path / "vae.plan", profile, tmp_path / "t.cache", tf32=True)
    assert facts.precision("latents") == "tf32"


# --- timesteps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_timesteps_stay_float32_in_every_precision(dtype: torch.dtype) -> None:
    """diffusers feeds the scheduler's float32 timesteps; in bf16, 999 would become 1000."""
    spec = ModelDims(hidden_size=64, pooled_size=32, upsample_factor=2).specs()[UNET].in_dtype(dtype)
    types = {t.name: t.dtype for t in spec.inputs}
    assert types["timestep"] == torch.float32 and types["sample"] == dtype
    timestep = spec.sample_inputs(batch=1, width=64, height=64)["timestep"]
    assert timestep.dtype == torch.float32 and timestep.item() == 999.0


def test_the_fp16_unet_plan_takes_a_float32_timestep(trt_build) -> None:
    out, _ = trt_build
    details = Manifest.read(out).components[UNET].plan.details
    assert details["io_dtypes"]["timestep"] == "FLOAT" and details["io_dtypes"]["sample"] == "HALF"


# --- the whole engine, over HTTP --------------------------------------------------------------------


async def test_the_tensorrt_engine_serves_an_image_over_http_on_the_stand_in(trt, trt_build, presets_dir, make_client) -> None:
    """Build, load (LoadedPlans, user-managed memory, the shared block), generate over HTTP, decode."""
    from engines.backends.tensorrt_engine import TensorRTEngine
    from tests.helpers import EXAMPLE_PROMPT

    out, _ = trt_build
    engine = TensorRTEngine("tiny", out, Manifest.read(out), presets_dir, device="cpu")
    client = await make_client(engine)
    reply = await client.post("/generate-image", json={"prompt": EXAMPLE_PROMPT, "num_inference_steps": 2, "width": 768})
    assert reply.status == 200, await reply.text()
    assert reply.headers["X-Engine"] == "tensorrt-fp16-vae-tf32"
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(await reply.read()))
    assert image.size == (768, 512)
    unet, vae = (context for context in trt.options.calls["contexts"][-3:] if context.launches)
    assert len(unet.launches) >= 2 and vae.launches  # two steps, then the VAE: on the stand-in's contexts
    assert unet.memory == vae.memory and unet.memory is not None  # one user-managed block
    assert trt.options.errors == []


# --- persistent I/O buffers (the CUDA graphs mode; on the CPU, without graphs) ----------------------


def count_calls(monkeypatch, context, method: str) -> list:
    calls: list = []
    real = getattr(type(context), method)
    monkeypatch.setattr(type(context), method, lambda self, *args: calls.append(args) or real(self, *args))
    return calls


def test_persistent_buffers_are_bound_once_per_shape_and_give_the_same_answers(trt, trt_build, monkeypatch) -> None:
    out, _ = trt_build
    manifest = Manifest.read(out)
    plan = {VAE_DECODER: (out / "vae_decoder.plan").read_bytes()}
    per_call = LoadedPlans(plan, manifest.dims.specs(), "cpu", lambda: STREAM).runners[VAE_DECODER]
    persistent = LoadedPlans(plan, manifest.dims.specs(), "cpu", lambda: STREAM, cuda_graphs=True).runners[VAE_DECODER]
    spec = manifest.dims.specs()[VAE_DECODER]
    (small,) = spec.sample_inputs(batch=1, width=512, height=512, seed=1).values()
    (other,) = spec.sample_inputs(batch=1, width=512, height=512, seed=2).values()
    (wide,) = spec.sample_inputs(batch=2, width=768, height=512, seed=3).values()
    addresses = count_calls(monkeypatch, persistent.context, "set_tensor_address")

    first = persistent(small)
    bound_once = list(addresses)
    second = persistent(other)
    assert addresses == bound_once, "a second call with the same shapes bound its tensors again"
    assert torch.equal(first, per_call(small)), "the next call overwrote an output already handed out"
    assert torch.equal(second, per_call(other)) and not torch.equal(first, second)

    assert torch.equal(persistent(wide), per_call(wide))  # another shape: its own buffers, bound
    assert torch.equal(persistent(small), first)  # back: the first shape's buffers bound again
    assert addresses[-2:] == bound_once and len(persistent.persistent) == 2
    assert trt.options.errors == []
