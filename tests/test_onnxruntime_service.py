"""The ONNX Runtime backend behind the real service: build_engines.py --onnx-only, then serve over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from engines.base import GenerationRequest
from engines.backends.torch_engine import TorchEngine
from tests.helpers import EXAMPLE_PROMPT, ServiceProcess, generate, request, running_service


@pytest.fixture(scope="module")
def onnx_service(onnx_engines: Path, presets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(
        [
            "--model", "tiny",
            "--engine", "onnxruntime",
            "--engine-dir", str(onnx_engines),
            "--device", "cpu",  # the CPU execution provider, also where onnxruntime-gpu is installed
            "--presets-dir", str(presets_dir),
            "--cache-dir", str(tmp_path_factory.mktemp("onnx-image-cache")),
        ]
    ) as service:
        yield service


def test_readyz_names_the_engine_and_why(onnx_service: ServiceProcess) -> None:
    body = request(onnx_service.base_url, "GET", "/readyz").json()
    assert body["engine"] == "onnxruntime-cpu-fp32"
    assert body["engine_reason"] == "asked for with --engine onnxruntime"
    assert body["model"] == "preset:tiny-v1-seed0"
    assert "engine: onnxruntime-cpu-fp32 (asked for with --engine onnxruntime)" in onnx_service.log()


def test_serves_the_same_picture_as_pytorch_in_float32(onnx_service: ServiceProcess, presets_dir: Path) -> None:
    reply = generate(onnx_service.base_url, {"prompt": EXAMPLE_PROMPT, "seed": 42})
    assert reply.status == 200, reply.body[:500]
    assert reply.headers["content-type"] == "image/png"
    assert reply.headers["x-engine"] == "onnxruntime-cpu-fp32" and reply.headers["x-seed"] == "42"
    served = np.asarray(reply.image().convert("RGB"), dtype=np.int16)
    assert served.shape == (512, 512, 3) and served.std() > 1  # a picture, not a flat colour

    reference = TorchEngine("tiny", device="cpu", precision="fp32", presets_dir=presets_dir)
    reference.load()
    try:
        expected = reference.generate([GenerationRequest(prompt=EXAMPLE_PROMPT, seed=42)])[0].astype(np.int16)
    finally:
        reference.close()
    difference = np.abs(served - expected)
    assert difference.max() <= 2 and difference.mean() < 0.05  # rounding of float32 differences only


def test_the_second_identical_request_is_a_cache_hit(onnx_service: ServiceProcess) -> None:
    payload = {"prompt": "a red bicycle", "seed": 7}
    first, second = generate(onnx_service.base_url, payload), generate(onnx_service.base_url, payload)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.body == second.body


def test_dynamic_axes_serve_other_sizes(onnx_service: ServiceProcess) -> None:
    reply = generate(onnx_service.base_url, {"prompt": EXAMPLE_PROMPT, "width": 384, "height": 256})
    assert reply.status == 200, reply.body[:500]
    assert reply.image().size == (384, 256)


def test_a_size_the_graph_cannot_take_is_refused_before_the_engine(onnx_service: ServiceProcess) -> None:
    reply = generate(onnx_service.base_url, {"prompt": EXAMPLE_PROMPT, "width": 520})
    assert reply.status == 422
    assert reply.json()["error"] == {
        "code": "invalid_field",
        "message": "width must be a multiple of 16, got 520",
        "field": "width",
    }


def test_image_to_image_matches_pytorch_in_float32(onnx_service: ServiceProcess, presets_dir: Path) -> None:
    from tests.test_image_to_image_http import b64, encoded, picture

    pixels = picture(384, 256, seed=5)
    body = {"prompt": EXAMPLE_PROMPT, "seed": 3, "image": b64(encoded(pixels)), "strength": 0.5, "num_inference_steps": 2}
    reply = generate(onnx_service.base_url, body)
    assert reply.status == 200, reply.body[:500]
    served = np.asarray(reply.image().convert("RGB"), dtype=np.int16)
    reference = TorchEngine("tiny", device="cpu", precision="fp32", presets_dir=presets_dir)
    reference.load()
    try:
        request_ = GenerationRequest(prompt=EXAMPLE_PROMPT, seed=3, num_inference_steps=2, width=384, height=256,
                                     image=pixels, strength=0.5)
        expected = reference.generate([request_])[0].astype(np.int16)
    finally:
        reference.close()
    difference = np.abs(served - expected)
    assert difference.max() <= 2 and difference.mean() < 0.05


def test_a_build_from_before_image_to_image_serves_text_and_names_the_rebuild(onnx_engines: Path, presets_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from engines.backends.onnxruntime_engine import OnnxRuntimeEngine
    from engines.manifest import Manifest

    old = tmp_path / "engines"
    shutil.copytree(onnx_engines, old)
    data = json.loads((old / "manifest.json").read_text())
    del data["components"]["vae_encoder"]  # what a build made before the encoder existed records
    (old / "manifest.json").write_text(json.dumps(data))
    shutil.rmtree(old / "vae_encoder")
    engine = OnnxRuntimeEngine("tiny", old, Manifest.read(old), device="cpu", presets_dir=presets_dir)
    assert not engine.limits.image_to_image
    assert "built before image-to-image" in engine.limits.image_to_image_reason
    assert f"python build_engines.py --model tiny --out {old}" in engine.limits.image_to_image_reason
    engine.load()
    try:
        (image,) = engine.generate([GenerationRequest(prompt=EXAMPLE_PROMPT, seed=1, width=256, height=256)])
        assert image.shape == (256, 256, 3)
    finally:
        engine.close()
