"""The GPU build path end to end on the CPU: the real export and manifest code, TensorRT 11's stand-in,
a GPU faked at the probe. What it proves: the UNet plan is built from an fp16 graph (precision lives
in the graph, read back from the plan, never a builder flag), the VAE from fp32 with TF32, the torch
model is gone before TensorRT builds, and every TensorRT failure is one line."""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import build_engines
from engines import select
from engines.build import builder
from engines.build.builder import BuildError, BuildRequest, build
from engines.core.hardware import GpuInfo
from engines.core.specs import UNET, VAE_DECODER, VAE_ENCODER, BuildRange
from engines.manifest import Manifest, ManifestError
from engines.models import sources
from tests import fake_tensorrt

GPU = GpuInfo("NVIDIA H200", "9.0")
RANGE = BuildRange.for_sizes(((512, 512), (768, 512)), 1, 2)


@pytest.fixture
def trt(monkeypatch):
    module = fake_tensorrt.make_module()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(builder, "cuda_gpu", lambda: GPU)
    return module


@dataclass
class Built:
    out: Path
    report: builder.BuildReport
    trt: object  # the stand-in module the build ran against, with its recorded calls


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> Built:
    """One tiny build for a faked H200, shared by the module's tests (none changes its files); records
    which torch UNets were alive when each plan was built."""
    alive: list[int] = []
    real_build_plan = builder.build_plan

    def counting_build_plan(*args, **kwargs):
        from diffusers import AutoencoderKL, UNet2DConditionModel

        gc.collect()
        alive.append(sum(type(o) in (UNet2DConditionModel, AutoencoderKL) for o in gc.get_objects()))
        return real_build_plan(*args, **kwargs)

    module = fake_tensorrt.make_module()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", module)
        patch.setattr(builder, "cuda_gpu", lambda: GPU)
        patch.setattr(builder, "build_plan", counting_build_plan)
        out = tmp_path_factory.mktemp("tensorrt-build") / "engines"
        report = build(BuildRequest(model="tiny", out=out, build_range=RANGE, presets_dir=presets_dir))
    report.torch_models_alive_at_plans = alive  # type: ignore[attr-defined]
    return Built(out, report, module)


def test_the_unet_plan_computes_in_fp16_read_back_from_the_plan(built) -> None:
    out, trt = built.out, built.trt
    unet = Manifest.read(out).components[UNET]
    assert unet.onnx.path == "unet/model.onnx"  # the fp32 graph stays, for ONNX Runtime and the checks
    assert unet.typed_onnx.path == "unet_fp16/model.onnx"
    assert unet.typed_onnx.details["types"]["FLOAT16"] > 0
    assert unet.plan.details["graph"] == "unet_fp16/model.onnx"
    assert unet.plan.details["precision"] == "fp16"
    assert unet.plan.details["io_dtypes"] == {  # the timestep stays float32, as diffusers feeds it
        "sample": "HALF", "timestep": "FLOAT", "encoder_hidden_states": "HALF", "text_embeds": "HALF",
        "time_ids": "HALF", "noise_pred": "HALF",
    }
    assert unet.plan.details["layer_dtypes"] == {"HALF": 2}  # read from the 11.x inspector's "Datatype"
    assert unet.plan.details["tf32"] is False  # cleared: TensorRT 11 starts with TF32 on
    assert fake_tensorrt.plan_path_io(out / "unet.plan")["sample"] == ("HALF", "INPUT")
    assert "FP16" not in trt.options.calls["flags"] and "BF16" not in trt.options.calls["flags"]
    assert not unet.typed_onnx.details["types"].get("BFLOAT16")


def test_the_vae_plan_stays_fp32_with_tf32(built) -> None:
    out, trt = built.out, built.trt
    vae = Manifest.read(out).components[VAE_DECODER]
    assert vae.typed_onnx is None
    assert vae.plan.details["graph"] == "vae_decoder/model.onnx"
    assert vae.plan.details["precision"] == "tf32"
    assert vae.plan.details["io_dtypes"] == {"latents": "FLOAT", "images": "FLOAT"}
    # The encoder (image-to-image) is kept out of fp16 the same way.
    encoder = Manifest.read(out).components[VAE_ENCODER]
    assert encoder.typed_onnx is None and encoder.plan.details["precision"] == "tf32"
    assert encoder.plan.details["io_dtypes"] == {"images": "FLOAT", "moments": "FLOAT"}
    # cleared for the UNet (on by default in TensorRT 11), set for each VAE plan
    assert trt.options.calls["flags"] == ["-TF32", "TF32", "TF32"]


def test_the_torch_model_is_freed_before_tensorrt_builds(built) -> None:
    report = built.report
    assert report.torch_models_alive_at_plans == [0, 0, 0]


def test_the_timing_cache_is_keyed_by_gpu_and_tensorrt(built) -> None:
    out = built.out
    assert (out / f"timing-nvidia-h200-sm90-trt{fake_tensorrt.VERSION}.cache").is_file()


def test_the_service_picks_and_names_the_plans_from_their_read_back_precision(built, trt, monkeypatch, presets_dir) -> None:
    out = built.out
    monkeypatch.setattr(select, "probe_gpu", lambda: GPU)
    monkeypatch.setattr(select, "probe_tensorrt", lambda: fake_tensorrt.VERSION)
    engine = select.select_engine(select.EngineRequest("auto", "tiny", out, presets_dir=presets_dir))
    assert engine.info.name == "tensorrt-fp16-vae-tf32"
    assert engine.info.selection_reason.startswith("auto: the TensorRT plans")
    assert engine.limits.sizes == ((512, 512), (768, 512))


def test_a_second_build_loads_no_weights_and_makes_nothing(built, trt, presets_dir, monkeypatch) -> None:
    out = built.out

    def no_loading(*args, **kwargs):
        raise AssertionError("a build with nothing to do loaded the model")

    monkeypatch.setattr(builder, "load_components", no_loading)
    report = build(BuildRequest(model="tiny", out=out, build_range=RANGE, presets_dir=presets_dir))
    assert report.made == [] and not report.manifest_written
    assert len(report.reused) == 7  # three fp32 graphs, the fp16 UNet graph, three plans


def test_plans_without_a_read_back_precision_are_refused(built) -> None:
    out = built.out
    manifest = Manifest.read(out)
    del manifest.components[UNET].plan.details["io_dtypes"]
    with pytest.raises(ManifestError, match="record no precision read back .* rebuild on this machine"):
        manifest.check_tensorrt(out, GPU, fake_tensorrt.VERSION)


def test_a_tensorrt_failure_is_one_line_from_build_engines(trt, tmp_path, presets_dir, capsys) -> None:
    trt.options.raises_in_build = RuntimeError("[TRT] [E] IBuilder::buildSerializedNetwork: Error Code 4:\n internal")
    code = build_engines.main(["--model", "tiny", "--out", str(tmp_path / "e"), "--presets-dir", str(presets_dir)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert error[-1].startswith("error: TensorRT failed building unet.plan: RuntimeError: [TRT] [E] IBuilder::")
    assert not any("Traceback" in line for line in error)


def test_a_build_error_names_the_failing_plan(trt, tmp_path, presets_dir) -> None:
    trt.options.builds = False
    with pytest.raises(BuildError, match="could not build unet.plan"):
        build(BuildRequest(model="tiny", out=tmp_path / "e", build_range=RANGE, presets_dir=presets_dir))


def test_a_hub_models_fingerprint_reads_no_weights(monkeypatch) -> None:
    asked = []

    def fake_resolve(repo_id, revision=None):
        asked.append((repo_id, revision))
        return "0123abc"

    def no_fetch(*args, **kwargs):
        raise AssertionError("the fingerprint fetched the model's files")

    monkeypatch.setattr(sources, "resolve_commit", fake_resolve)
    monkeypatch.setattr(sources, "fetch_snapshot", no_fetch)
    assert sources.model_fingerprint("stabilityai/sdxl-turbo", "v1") == "hf:stabilityai/sdxl-turbo@0123abc"
    assert asked == [("stabilityai/sdxl-turbo", "v1")]
