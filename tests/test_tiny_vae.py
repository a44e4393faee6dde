"""--vae tiny: the tiny autoencoder (TAESD-XL) decodes; a different picture under a different cache key."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from engines.base import EngineUnavailable, GenerationRequest
from engines.core.hardware import cpu_has_bf16
from engines.manifest import Manifest
from engines.backends.openvino_engine import OpenVINOEngine
from engines.select import EngineRequest, select_engine
from engines.backends.torch_engine import TorchEngine
from tests.helpers import EXAMPLE_PROMPT, ServiceProcess, generate, running_service

REQUEST = GenerationRequest(prompt=EXAMPLE_PROMPT, seed=5)


def images(engine) -> np.ndarray:
    engine.load()
    try:
        return engine.generate([REQUEST])[0]
    finally:
        engine.close()


def test_torch_engine_decodes_with_the_tiny_autoencoder(presets_dir: Path) -> None:
    from diffusers import AutoencoderTiny

    engine = TorchEngine("tiny", device="cpu", presets_dir=presets_dir, vae="tiny")
    assert engine.info.name == f"torch-cpu-{'bf16' if cpu_has_bf16() else 'fp32'}-taesd"
    engine.load()
    try:
        decoder = engine.pipeline.vae_decoder
        assert isinstance(decoder.vae, AutoencoderTiny) and decoder.dtype == engine.numerics.dtype
        assert engine.pipeline.config.vae_scaling_factor == 1.0  # TAESD reads the UNet's latents as they are
        tiny = engine.generate([REQUEST])[0]
    finally:
        engine.close()
    full = images(TorchEngine("tiny", device="cpu", presets_dir=presets_dir))
    assert tiny.shape == full.shape == (512, 512, 3) and tiny.std() > 1
    assert not np.array_equal(tiny, full)


def test_openvino_unet_with_the_tiny_autoencoder(openvino_engines: Path, presets_dir: Path) -> None:
    engine = OpenVINOEngine("tiny", openvino_engines, Manifest.read(openvino_engines), presets_dir=presets_dir, vae="tiny")
    assert engine.info.name.endswith("-taesd")
    pixels = images(engine)
    assert pixels.shape == (512, 512, 3) and pixels.std() > 1


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_engines_without_a_tiny_autoencoder_say_so(backend: str, onnx_engines: Path) -> None:
    with pytest.raises(EngineUnavailable, match="--vae tiny runs on the torch and openvino engines"):
        select_engine(EngineRequest(engine=backend, model="tiny", engine_dir=onnx_engines, vae="tiny"))


@pytest.fixture(scope="module")
def tiny_vae_service(presets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(
        ["--model", "tiny", "--vae", "tiny", "--presets-dir", str(presets_dir),
         "--cache-dir", str(tmp_path_factory.mktemp("tiny-vae-cache"))]
    ) as service:
        yield service


def test_tiny_vae_images_are_served_under_their_own_key(tiny_vae_service: ServiceProcess, tiny_service: ServiceProcess) -> None:
    payload = {"prompt": EXAMPLE_PROMPT, "seed": 11}
    tiny = generate(tiny_vae_service.base_url, payload)
    full = generate(tiny_service.base_url, payload)
    assert tiny.status == full.status == 200
    assert tiny.headers["x-engine"].endswith("-taesd") and not full.headers["x-engine"].endswith("-taesd")
    assert tiny.headers["etag"] != full.headers["etag"] and tiny.body != full.body
    assert tiny.image().size == (512, 512)
