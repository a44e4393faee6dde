"""The OpenVINO CPU path: build_engines.py --target cpu, numerics against torch, selection, HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from engines import select
from engines.base import GenerationRequest
from engines.core.hardware import cpu_has_bf16
from engines.core.resident import mapped_resident
from engines.backends.openvino_engine import OpenVINOEngine
from engines.manifest import Manifest
from engines.select import EngineRequest, select_engine
from engines.backends.torch_engine import TorchEngine
from tests.helpers import EXAMPLE_PROMPT, ServiceProcess, generate, request, run_build_engines, running_service

REQUESTS = [GenerationRequest(prompt=EXAMPLE_PROMPT, seed=42), GenerationRequest(prompt="a red bicycle", seed=7, num_inference_steps=2)]
# Image-to-image runs the VAE encoder too (strength 0.5, 2 steps: SDXL Turbo's own example).
REQUESTS.append(GenerationRequest(prompt="a red bicycle", seed=8, num_inference_steps=2, strength=0.5, width=384, height=256,
                                  image=np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def torch_fp32_images(presets_dir: Path) -> list[np.ndarray]:
    engine = TorchEngine("tiny", device="cpu", precision="fp32", presets_dir=presets_dir)
    engine.load()
    try:
        return [engine.generate([r])[0].astype(np.int16) for r in REQUESTS]
    finally:
        engine.close()


def openvino_images(openvino_engines: Path, presets_dir: Path, precision: str) -> list[np.ndarray]:
    engine = OpenVINOEngine("tiny", openvino_engines, Manifest.read(openvino_engines), precision, presets_dir)
    engine.load()
    try:
        assert engine.info.name == f"openvino-cpu-{'f32' if precision == 'fp32' else 'bf16'}"
        return [engine.generate([r])[0].astype(np.int16) for r in REQUESTS]
    finally:
        engine.close()


def test_the_cpu_build_records_openvino_and_the_processor(openvino_engines: Path) -> None:
    data = json.loads((openvino_engines / "manifest.json").read_text())
    assert data["versions"]["openvino"] and data["cpu"]["bf16"] == cpu_has_bf16()
    for name in ("unet", "vae_decoder", "vae_encoder"):
        entry = data["components"][name]
        assert entry["onnx"] is None and entry["plan"] is None
        assert entry["openvino"]["path"] == f"{name}.openvino/model.xml"
        assert set(entry["openvino"]["files"]) == {f"{name}.openvino/model.xml", f"{name}.openvino/model.bin"}
        assert entry["openvino"]["details"]["check"]["max_rel"] < 1e-2


def test_a_second_cpu_build_with_nothing_changed_does_nothing(openvino_engines: Path, presets_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "engines"
    shutil.copytree(openvino_engines, copy)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    result = run_build_engines(["--model", "tiny", "--out", str(copy), "--target", "cpu", "--presets-dir", str(presets_dir)])
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == before


def test_onnx_only_and_target_cpu_together_are_refused(tmp_path: Path) -> None:
    result = run_build_engines(["--model", "tiny", "--out", str(tmp_path), "--target", "cpu", "--onnx-only"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --onnx-only and --target cpu ask for different builds: give one of them"


def test_f32_images_match_torch_fp32(openvino_engines: Path, presets_dir: Path, torch_fp32_images) -> None:
    """Stated tolerance: at most 3 levels on any pixel, under 0.1 level on average (fp16-stored weights)."""
    for got, expected in zip(openvino_images(openvino_engines, presets_dir, "fp32"), torch_fp32_images):
        difference = np.abs(got - expected)
        assert difference.max() <= 3 and difference.mean() < 0.1, (difference.max(), difference.mean())


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_images_are_the_same_picture(openvino_engines: Path, presets_dir: Path, torch_fp32_images) -> None:
    """bf16 keeps 8 bits of mantissa: pixels move a little, the picture stays (correlation > 0.99)."""
    for got, expected in zip(openvino_images(openvino_engines, presets_dir, "bf16"), torch_fp32_images):
        difference = np.abs(got - expected)
        correlation = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
        assert difference.mean() < 4 and correlation > 0.99, (difference.mean(), correlation)


def test_the_engine_keeps_no_page_of_its_weight_files_resident(openvino_engines: Path, presets_dir: Path) -> None:
    """The compiled models map model.bin (or the cached blob) and repack every weight at the first
    inference: only the repacked copy stays resident (engines/core/resident.py)."""
    engine = OpenVINOEngine("tiny", openvino_engines, Manifest.read(openvino_engines), "auto", presets_dir)
    engine.load()
    try:
        engine.generate(REQUESTS[:1])
        mapped = mapped_resident(openvino_engines)
    finally:
        engine.close()
    assert any(path.endswith((".bin", ".blob")) for path in mapped), mapped
    assert sum(mapped.values()) == 0, mapped


def test_auto_on_a_cpu_prefers_a_matching_openvino_build(openvino_engines: Path, monkeypatch) -> None:
    monkeypatch.setattr(select, "probe_gpu", lambda: None)
    engine = select_engine(EngineRequest(engine="auto", model="tiny", engine_dir=openvino_engines))
    assert engine.info.name.startswith("openvino-cpu-")
    assert engine.info.selection_reason == (
        f"auto: not TensorRT (no CUDA GPU is visible); the OpenVINO IR in {openvino_engines} matches the model"
    )


def test_auto_refuses_a_changed_ir_and_falls_back_to_torch(openvino_engines: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(select, "probe_gpu", lambda: None)
    copy = tmp_path / "engines"
    shutil.copytree(openvino_engines, copy)
    with (copy / "unet.openvino" / "model.bin").open("ab") as handle:
        handle.write(b"\0")
    engine = select_engine(EngineRequest(engine="auto", model="tiny", engine_dir=copy))
    assert engine.info.name.startswith("torch-")
    assert "model.bin does not match manifest.json" in engine.info.selection_reason
    assert "--target cpu`" in engine.info.selection_reason


def test_auto_refuses_another_models_build(openvino_engines: Path, monkeypatch) -> None:
    monkeypatch.setattr(select, "probe_gpu", lambda: None)
    engine = select_engine(EngineRequest(engine="auto", model="sdxl-random", engine_dir=openvino_engines))
    assert engine.info.name.startswith("torch-")
    assert "were built for the model tiny" in engine.info.selection_reason


@pytest.fixture(scope="module")
def openvino_service(openvino_engines: Path, presets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(
        ["--model", "tiny", "--engine-dir", str(openvino_engines), "--presets-dir", str(presets_dir),
         "--cache-dir", str(tmp_path_factory.mktemp("openvino-image-cache"))]
    ) as service:
        yield service


def test_the_service_serves_openvino_images_over_http(openvino_service: ServiceProcess) -> None:
    ready = request(openvino_service.base_url, "GET", "/readyz").json()
    assert ready["engine"].startswith("openvino-cpu-") and "OpenVINO IR" in ready["engine_reason"]
    reply = generate(openvino_service.base_url, {"prompt": EXAMPLE_PROMPT, "seed": 3})
    assert reply.status == 200 and reply.headers["x-engine"] == ready["engine"]
    assert reply.image().size == (512, 512) and np.asarray(reply.image()).std() > 1
    again = generate(openvino_service.base_url, {"prompt": EXAMPLE_PROMPT, "seed": 3})
    assert again.headers["x-cache"] == "HIT" and again.body == reply.body
