"""The gpu tier, TensorRT part: real strongly typed plans for the tiny model, against PyTorch on the
same GPU, served over HTTP. (The PyTorch-on-CUDA part is tests/test_torch_cuda.py.)

Skipped without a CUDA GPU and an importable TensorRT; `make gpu-check` runs it on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from engines.base import EngineError, GenerationRequest
from engines.core.specs import UNET, VAE_DECODER
from engines.core.hardware import cuda_gpu
from engines.manifest import Manifest
from engines.build.checks import compare
from engines.build.onnx_export import export_modules
from engines.models.presets import build_tiny_components
from engines.select import EngineRequest, select_engine
from engines.backends.tensorrt_engine import LoadedPlans, tensorrt_version
from engines.backends.torch_engine import TorchEngine
from tests.helpers import (
    EXAMPLE_PROMPT,
    ServiceProcess,
    assert_same_picture,
    case_id,
    generate,
    gpu_cases,
    loaded,
    pixel_difference,
    request,
    run_build_engines,
    running_service,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and tensorrt_version()), reason="needs a CUDA GPU and TensorRT (make gpu-check)"
    ),
]

SIZES = "512x512,768x512"
MAX_BATCH = 2


@pytest.fixture(scope="module")
def trt_engines(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("trt-engines")
    args = ["--model", "tiny", "--out", str(out), "--presets-dir", str(presets_dir), "--batch", f"1-{MAX_BATCH}", "--sizes", SIZES]
    result = run_build_engines(args, timeout=1800)
    assert result.returncode == 0, result.stderr
    return out


def test_the_manifest_records_the_precision_tensorrt_built(trt_engines: Path) -> None:
    """Read back from the engines: the UNet computes in fp16, the VAE in fp32/TF32, never fp16."""
    manifest = Manifest.read(trt_engines)
    assert manifest.gpu == cuda_gpu()
    assert manifest.versions["tensorrt"] == tensorrt_version()
    unet, vae = (manifest.components[name].plan.details for name in (UNET, VAE_DECODER))
    assert unet["precision"] == "fp16" and unet["io_dtypes"].pop("timestep") == "FLOAT"  # as diffusers feeds it
    assert set(unet["io_dtypes"].values()) == {"HALF"} and unet["tf32"] is False
    assert unet["layer_dtypes"].get("HALF", 0) > unet["layer_dtypes"].get("FLOAT", 0), unet["layer_dtypes"]
    assert vae["precision"] == "tf32" and set(vae["io_dtypes"].values()) == {"FLOAT"}
    assert "HALF" not in vae["layer_dtypes"], vae["layer_dtypes"]
    manifest.verify_files(trt_engines, "plan")


def test_a_second_build_rebuilds_nothing(trt_engines: Path, presets_dir: Path) -> None:
    args = ["--model", "tiny", "--out", str(trt_engines), "--presets-dir", str(presets_dir), "--batch", f"1-{MAX_BATCH}", "--sizes", SIZES]
    result = run_build_engines(args)
    assert result.returncode == 0 and "nothing to do" in result.stderr, result.stderr


@pytest.mark.parametrize(("component", "batch", "tolerance"), [(UNET, 2 * MAX_BATCH, 5e-2), (VAE_DECODER, MAX_BATCH, 1e-2)])
def test_plans_match_torch_in_float32(trt_engines: Path, component: str, batch: int, tolerance: float) -> None:
    """At the profile's largest batch (the UNet's doubled by guidance) and a non-square size."""
    manifest = Manifest.read(trt_engines)
    spec = manifest.dims.specs()[component]
    module = export_modules(build_tiny_components())[component].to("cuda")
    plans = LoadedPlans({component: (trt_engines / f"{component}.plan").read_bytes()}, manifest.dims.specs())
    inputs = [t.to("cuda") for t in spec.sample_inputs(batch=batch, width=768, height=512).values()]
    stream = torch.cuda.Stream()
    with torch.no_grad(), torch.cuda.stream(stream):
        actual = plans.runners[component](*inputs)
        expected = module(*inputs).float()
    stream.synchronize()
    check = compare(actual.cpu().numpy(), expected.cpu().numpy())
    print(f"{component}: TensorRT against torch float32: {check.describe()}")
    assert check.max_rel < tolerance, check.describe()


def test_a_batch_past_the_profile_is_an_engine_error(trt_engines: Path) -> None:
    manifest = Manifest.read(trt_engines)
    spec = manifest.dims.specs()[VAE_DECODER]
    plans = LoadedPlans({VAE_DECODER: (trt_engines / "vae_decoder.plan").read_bytes()}, manifest.dims.specs())
    (latents,) = spec.sample_inputs(batch=MAX_BATCH + 1, width=512, height=512).values()
    with pytest.raises(EngineError, match="outside the plan's profile"):
        plans.runners[VAE_DECODER](latents.to("cuda"))


@pytest.fixture(scope="module")
def tensorrt_and_torch(trt_engines: Path, presets_dir: Path) -> Iterator[tuple]:
    engine = select_engine(EngineRequest("auto", "tiny", trt_engines, presets_dir=presets_dir))
    reference = TorchEngine("tiny", device="cuda", precision="fp32", presets_dir=presets_dir)
    with loaded(engine, reference):
        yield engine, reference


def test_auto_picks_tensorrt(tensorrt_and_torch) -> None:
    engine, _ = tensorrt_and_torch
    assert engine.info.name == "tensorrt-fp16-vae-tf32"


@pytest.mark.parametrize("generation", gpu_cases(), ids=case_id)
def test_tensorrt_makes_the_torch_picture(tensorrt_and_torch, generation: GenerationRequest) -> None:
    """1, 2 and 4 steps (the timestep is a view into the schedule), guidance, a non-square size."""
    engine, reference = tensorrt_and_torch
    assert_same_picture(engine, reference, generation, "TensorRT")


def test_a_batch_of_two_gives_each_request_its_picture(tensorrt_and_torch) -> None:
    engine, reference = tensorrt_and_torch
    pair = [GenerationRequest(prompt=EXAMPLE_PROMPT, seed=s, width=768, height=512) for s in (21, 22)]
    for image, expected in zip(engine.generate(pair), reference.generate(pair)):
        assert pixel_difference(image, expected)[1] < 4


@pytest.fixture(scope="module")
def trt_service(trt_engines: Path, presets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(
        [
            "--model", "tiny",
            "--engine", "auto",
            "--engine-dir", str(trt_engines),
            "--presets-dir", str(presets_dir),
            "--cache-dir", str(tmp_path_factory.mktemp("trt-image-cache")),
        ]
    ) as service:
        yield service


def test_the_service_serves_a_tensorrt_image(trt_service: ServiceProcess) -> None:
    ready = request(trt_service.base_url, "GET", "/readyz").json()
    assert ready["engine"].startswith("tensorrt-") and ready["engine_reason"].startswith("auto: the TensorRT plans")
    reply = generate(trt_service.base_url, {"prompt": EXAMPLE_PROMPT})
    assert reply.status == 200, reply.body[:500]
    assert reply.headers["x-engine"] == ready["engine"]
    assert reply.image().size == (512, 512)


def test_the_service_refuses_sizes_outside_the_plans(trt_service: ServiceProcess) -> None:
    reply = generate(trt_service.base_url, {"prompt": EXAMPLE_PROMPT, "width": 512, "height": 768})
    assert reply.status == 422
    assert "supported: 512x512, 768x512" in reply.json()["error"]["message"]
