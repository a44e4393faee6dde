"""The TensorRT backend's own logic, on the CPU, against a stand-in for the `tensorrt` module.

These tests check what our code asks of TensorRT (names bound, shapes set, dtypes cast, flags,
profiles, the timing cache); that TensorRT answers as documented is for tests/test_tensorrt_gpu.py.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.build import tensorrt_plans
from engines.base import EngineError
from engines.core.specs import UNET, BuildRange, ModelDims
from engines.backends.tensorrt_engine import ALIGNMENT, TensorRTRunner, aligned
from engines.build.tensorrt_plans import PlanBuildError, build_plan
from engines.core.numerics import tensorrt_graph
from tests import fake_tensorrt

SPEC = ModelDims(hidden_size=64, pooled_size=32, upsample_factor=2).specs()[UNET]
NUMPY = {"FLOAT": (ctypes.c_float, np.float32), "HALF": (ctypes.c_uint16, np.float16)}


class FakeDtype:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeEngine:
    """The sample goes in and the noise comes out as fp16; everything else is fp32."""

    def get_tensor_dtype(self, name: str) -> FakeDtype:
        return FakeDtype("HALF" if name in ("sample", "noise_pred") else "FLOAT")


class FakeContext:
    """Reads its inputs from the bound addresses, as the GPU would: noise = 2 * sample + timestep / 1000."""

    max_batch = 2

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if shape[0] > self.max_batch:
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if address % ALIGNMENT:  # TensorRT's rule for every tensor address
            return False
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        assert name == "noise_pred"
        return self.shapes["sample"]

    def read(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        c_type, np_type = NUMPY[dtype]
        count = int(np.prod(shape))
        return np.ctypeslib.as_array((c_type * count).from_address(self.addresses[name])).view(np_type).reshape(shape)

    def execute_async_v3(self, stream: int) -> bool:
        self.streams.append(stream)
        sample = self.read("sample", "HALF", self.shapes["sample"])
        timestep = self.read("timestep", "FLOAT", self.shapes["timestep"])
        noise = self.read("noise_pred", "HALF", self.shapes["sample"])
        noise[...] = 2 * sample + (timestep / 1000).reshape(-1, 1, 1, 1)
        return True


def runner() -> tuple[TensorRTRunner, FakeContext]:
    context = FakeContext()
    return TensorRTRunner(FakeEngine(), context, SPEC, device="cpu", stream_handle=lambda: 7), context


def test_runner_binds_inputs_by_name_casts_and_returns_float32() -> None:
    run, context = runner()
    samples = SPEC.sample_inputs(batch=2, width=128, height=64)
    noise = run(*(samples[name] for name in SPEC.input_names))
    assert noise.dtype == torch.float32 and noise.shape == (2, 4, 8, 16)
    expected = 2 * samples["sample"] + 0.999
    assert torch.allclose(noise, expected, atol=2e-2)
    assert set(context.addresses) == {*SPEC.input_names, "noise_pred"}
    assert context.shapes["encoder_hidden_states"] == (2, 77, 64)
    assert context.streams == [7]  # one launch, on the stream it was given


def test_runner_makes_non_contiguous_inputs_contiguous() -> None:
    run, _ = runner()
    samples = SPEC.sample_inputs(batch=1, width=128, height=128)
    transposed = samples["sample"].transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not transposed.is_contiguous()
    samples["sample"] = transposed
    noise = run(*(samples[name] for name in SPEC.input_names))
    assert torch.allclose(noise, 2 * transposed + 0.999, atol=2e-2)


def test_a_shape_outside_the_profile_is_an_engine_error() -> None:
    run, _ = runner()
    samples = SPEC.sample_inputs(batch=3, width=64, height=64)
    with pytest.raises(EngineError, match=r"unet: sample shaped \(3, 4, 8, 8\) is outside the plan's profile"):
        run(*(samples[name] for name in SPEC.input_names))


def test_the_runner_checks_its_arity() -> None:
    run, _ = runner()
    with pytest.raises(TypeError, match="unet takes 5 tensors, got 1"):
        run(torch.zeros(1))


def test_a_timestep_view_into_the_schedule_is_bound_aligned() -> None:
    """The loop's timestep is `scheduler.timesteps[i]` expanded: a view 4 bytes into its storage."""
    run, context = runner()
    samples = SPEC.sample_inputs(batch=1, width=64, height=64)
    schedule = torch.tensor([999.0, 759.0, 499.0, 259.0])
    samples["timestep"] = schedule[1].expand(1)
    assert samples["timestep"].data_ptr() % ALIGNMENT != 0
    noise = run(*(samples[name] for name in SPEC.input_names))
    assert all(address % ALIGNMENT == 0 for address in context.addresses.values())
    assert torch.allclose(noise, 2 * samples["sample"] + 0.759, atol=2e-2)


def test_aligned_copies_only_what_it_must() -> None:
    storage = torch.arange(200, dtype=torch.float32)
    view = storage[1:65]
    copy = aligned(view)
    assert copy.data_ptr() % ALIGNMENT == 0 and torch.equal(copy, view)
    assert aligned(copy) is copy


def test_a_refused_address_is_an_engine_error() -> None:
    run, context = runner()
    context.set_tensor_address = lambda name, address: False
    samples = SPEC.sample_inputs(batch=1, width=64, height=64)
    with pytest.raises(EngineError, match="TensorRT refused the address of sample"):
        run(*(samples[name] for name in SPEC.input_names))


def test_the_vae_graph_stays_out_of_fp16() -> None:
    assert tensorrt_graph("unet", "fp16") == (torch.float16, False)
    assert tensorrt_graph("unet", "bf16") == (torch.bfloat16, False)
    assert tensorrt_graph("vae_decoder", "fp16") == (torch.float32, True)


# --- the plan builder, against the TensorRT 11 stand-in ------------------------------------------------


@pytest.fixture
def trt(monkeypatch) -> types.ModuleType:
    module = fake_tensorrt.make_module()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def build(tmp_path: Path, onnx_engines: Path, tf32: bool = False) -> tensorrt_plans.PlanFacts:
    profile = SPEC.profile(BuildRange.for_sizes(((512, 512), (768, 768)), 1, 2))
    return build_plan(onnx_engines / "unet" / "model.onnx", tmp_path / "unet.plan", profile, tmp_path / "timing.cache", 5, tf32)


def test_a_strongly_typed_build_reads_its_precision_back(trt, tmp_path: Path, onnx_engines: Path) -> None:
    facts = build(tmp_path, onnx_engines)
    calls = trt.options.calls
    assert calls["parsed"] == str(onnx_engines / "unet" / "model.onnx")
    assert calls["networks"][0].flags == 0  # TensorRT 11: strongly typed is the only mode, no flag
    assert calls["flags"] == ["-TF32"]  # no precision flags (the graph's types decide); TF32, on by default, cleared
    assert calls["config"].builder_optimization_level == 5
    assert calls["config"].profiling_verbosity is trt.ProfilingVerbosity.DETAILED
    assert calls["shapes"]["sample"] == ((1, 4, 64, 64), (1, 4, 64, 64), (4, 4, 96, 96))
    assert set(calls["shapes"]) == set(SPEC.input_names)
    assert facts.io_dtypes["sample"] == "FLOAT" and facts.precision("sample") == "fp32"
    assert facts.layer_dtypes == {"FLOAT": 2}
    assert fake_tensorrt.plan_path_io(tmp_path / "unet.plan")["noise_pred"] == ("FLOAT", "OUTPUT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache", "unet.plan"]  # no temporary files left


def test_tf32_is_allowed_where_asked_and_named(trt, tmp_path: Path, onnx_engines: Path) -> None:
    facts = build(tmp_path, onnx_engines, tf32=True)
    assert trt.options.calls["flags"] == ["TF32"]
    assert facts.precision("sample") == "tf32"


def test_tensorrt_10_needs_the_strongly_typed_flag(trt, tmp_path: Path, onnx_engines: Path) -> None:
    trt.__version__ = "10.13.3.9"
    build(tmp_path, onnx_engines)
    assert trt.options.calls["networks"][0].flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def test_a_tensorrt_too_old_for_strong_typing_is_refused(trt, tmp_path: Path, onnx_engines: Path) -> None:
    trt.__version__ = "10.8.0.43"
    with pytest.raises(PlanBuildError, match="TensorRT 10.8.0.43 is older than 10.12"):
        build(tmp_path, onnx_engines)


def test_the_timing_cache_carries_over_between_builds(trt, tmp_path: Path, onnx_engines: Path) -> None:
    build(tmp_path, onnx_engines)
    build(tmp_path, onnx_engines)
    assert trt.options.calls["cache_in"] == [b"", b"+timings"]
    assert (tmp_path / "timing.cache").read_bytes() == b"+timings+timings"


def test_a_refused_timing_cache_is_a_build_error(trt, tmp_path: Path, onnx_engines: Path) -> None:
    trt.options.accepts_timing_cache = False
    with pytest.raises(PlanBuildError, match="refused the timing cache"):
        build(tmp_path, onnx_engines)


def test_the_builder_reports_progress_in_the_log(trt, tmp_path: Path, onnx_engines: Path, caplog) -> None:
    build(tmp_path, onnx_engines)
    monitor = trt.options.calls["config"].progress_monitor
    with caplog.at_level(logging.INFO, logger=tensorrt_plans.__name__):
        monitor.phase_start("Building engine", None, 3)
        monitor.phase_start("Tactic selection", "Building engine", 40)  # nested: not logged
        assert monitor.step_complete("Building engine", 1) is True  # True: go on
    assert [r.getMessage() for r in caplog.records] == ["unet.plan: Building engine (3 steps)"]


def test_a_graph_tensorrt_cannot_parse_is_one_line(trt, tmp_path: Path, onnx_engines: Path) -> None:
    trt.options.parses = False
    with pytest.raises(PlanBuildError, match="could not parse .*: In node 0: unsupported operator; In node 1") as failure:
        build(tmp_path, onnx_engines)
    assert "\n" not in str(failure.value)


def test_a_failed_build_writes_nothing(trt, tmp_path: Path, onnx_engines: Path) -> None:
    trt.options.builds = False
    with pytest.raises(PlanBuildError, match="could not build unet.plan"):
        build(tmp_path, onnx_engines)
    assert list(tmp_path.iterdir()) == []


def test_anything_tensorrt_raises_is_one_line(trt, tmp_path: Path, onnx_engines: Path) -> None:
    trt.options.raises_in_build = TypeError("build_serialized_network(): incompatible function arguments.\n  1. ...")
    with pytest.raises(PlanBuildError, match=r"^TensorRT failed building unet.plan: TypeError: build_serialized_network\(\)"):
        build(tmp_path, onnx_engines)
