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
from engines.backends.tensorrt_engine import TensorRTRunner
from engines.build.tensorrt_plans import PlanBuildError, build_plan
from engines.core.numerics import tensorrt_vae_precision as vae_precision

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


def test_vae_precision_keeps_the_vae_out_of_fp16() -> None:
    assert vae_precision("8.0") == vae_precision("9.0") == "bf16"
    assert vae_precision("7.5") == "fp32"


# --- the builder, against a stand-in module ---------------------------------------------------------------


class FakeTensorRT(types.ModuleType):
    """What build_plan touches of `tensorrt`, recording what it was asked."""

    def __init__(self, parses: bool = True, builds: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = "10.8.0.43"
        fake = self
        self.calls: dict[str, object] = {"flags": [], "shapes": {}}

        class Logger:
            WARNING = "warning"

            def __init__(self, severity: str) -> None:
                pass

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+new timings"

        class Config:
            builder_optimization_level = 3
            progress_monitor = None

            def set_flag(self, flag: str) -> None:
                fake.calls["flags"].append(flag)

            def add_optimization_profile(self, profile: object) -> int:
                return 0

            def create_timing_cache(self, data: bytes) -> TimingCache:
                fake.calls["cache_in"] = bytes(data)
                self.cache = TimingCache(bytes(data))
                return self.cache

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                fake.calls["ignore_mismatch"] = ignore_mismatch
                return True

            def get_timing_cache(self) -> TimingCache:
                return self.cache

        class Profile:
            def set_shape(self, name: str, smallest, usual, largest) -> None:
                fake.calls["shapes"][name] = (smallest, usual, largest)

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> str:
                return "network"

            def create_builder_config(self) -> Config:
                fake.calls["config"] = Config()
                return fake.calls["config"]

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: str, config: Config) -> bytes | None:
                return b"serialized plan" if builds else None

        class OnnxParser:
            num_errors = 0 if parses else 2

            def __init__(self, network: str, logger: Logger) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                fake.calls["parsed"] = path
                return parses

            def get_error(self, index: int) -> str:
                return f"unsupported node {index}"

        class IProgressMonitor:
            def __init__(self) -> None:
                pass

        self.Logger, self.Builder, self.OnnxParser, self.IProgressMonitor = Logger, Builder, OnnxParser, IProgressMonitor
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", BF16="BF16")


def build(monkeypatch, tmp_path: Path, precision: str = "fp16", **fake_options: bool) -> FakeTensorRT:
    fake = FakeTensorRT(**fake_options)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    profile = SPEC.profile(BuildRange.for_sizes(((512, 512), (768, 768)), 1, 2))
    build_plan(tmp_path / "unet" / "model.onnx", tmp_path / "unet.plan", profile, precision, tmp_path / "timing.cache", 5)
    return fake


def test_build_plan_sets_precision_profile_level_and_writes_the_plan(monkeypatch, tmp_path: Path) -> None:
    fake = build(monkeypatch, tmp_path)
    assert fake.calls["parsed"] == str(tmp_path / "unet" / "model.onnx")
    assert fake.calls["flags"] == ["FP16"]
    assert fake.calls["config"].builder_optimization_level == 5
    assert fake.calls["shapes"]["sample"] == ((1, 4, 64, 64), (1, 4, 64, 64), (4, 4, 96, 96))
    assert set(fake.calls["shapes"]) == set(SPEC.input_names)
    assert (tmp_path / "unet.plan").read_bytes() == b"serialized plan"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache", "unet.plan"]  # no temporary files left


@pytest.mark.parametrize(("precision", "flags"), [("fp32", []), ("bf16", ["BF16"])])
def test_build_plan_precisions(monkeypatch, tmp_path: Path, precision: str, flags: list[str]) -> None:
    assert build(monkeypatch, tmp_path, precision).calls["flags"] == flags


def test_the_timing_cache_carries_over_between_builds(monkeypatch, tmp_path: Path) -> None:
    first = build(monkeypatch, tmp_path)
    assert first.calls["cache_in"] == b"" and first.calls["ignore_mismatch"] is False
    second = build(monkeypatch, tmp_path)
    assert second.calls["cache_in"] == b"+new timings"
    assert (tmp_path / "timing.cache").read_bytes() == b"+new timings+new timings"


def test_the_builder_reports_progress_in_the_log(monkeypatch, tmp_path: Path, caplog) -> None:
    fake = build(monkeypatch, tmp_path)
    monitor = fake.calls["config"].progress_monitor
    with caplog.at_level(logging.INFO, logger=tensorrt_plans.__name__):
        monitor.phase_start("Building engine", None, 3)
        monitor.phase_start("Tactic selection", "Building engine", 40)  # nested: not logged
        assert monitor.step_complete("Building engine", 1) is True  # True: go on
    assert [r.getMessage() for r in caplog.records] == ["unet.plan: Building engine (3 steps)"]


def test_a_graph_tensorrt_cannot_parse(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(PlanBuildError, match="could not parse .*: unsupported node 0; unsupported node 1"):
        build(monkeypatch, tmp_path, parses=False)


def test_a_failed_build_writes_nothing(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(PlanBuildError, match="could not build unet.plan"):
        build(monkeypatch, tmp_path, builds=False)
    assert list(tmp_path.iterdir()) == []
