"""The OpenVINO CPU path: build_engines.py --target cpu, numerics against torch, selection, HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from engines import select
from engines.base import EngineUnavailable, GenerationRequest
from engines.core.hardware import cpu_has_bf16
from engines.core.resident import mapped_resident
from engines.backends.openvino_engine import COMPILED_CACHE, COMPILES, OpenVINOEngine
from engines.core.text_encoders import TorchTextEncoders
from engines.manifest import Manifest
from engines.select import EngineRequest, select_engine
from engines.backends.torch_engine import TorchEngine
from tests.helpers import REPO, EXAMPLE_PROMPT, ServiceProcess, free_port, generate, request, run_build_engines, running_service

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


def openvino_images(openvino_engines: Path, presets_dir: Path, precision: str, **options: Any) -> list[np.ndarray]:
    manifest = Manifest.read(openvino_engines)
    engine = OpenVINOEngine("tiny", openvino_engines, manifest, precision, presets_dir, **options)
    engine.load()
    try:
        text = "ov" + ("" if manifest.openvino_text_weights() == "fp16" else f"-{manifest.openvino_text_weights()}")
        static = "-".join(f"{w}x{h}" for w, h in sorted(engine.static_sizes))
        assert engine.info.name == f"openvino-cpu-{'f32' if precision == 'fp32' else 'bf16'}-text-{text}" + (f"-static-{static}" if static else "")
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


# --- the text encoders from the same build --------------------------------------------------------


def test_the_cpu_build_converts_both_text_encoders_int8_where_their_error_allows(openvino_engines: Path) -> None:
    data = json.loads((openvino_engines / "manifest.json").read_text())
    for name in ("text_encoder", "text_encoder_2"):
        artefact = data["components"][name]["openvino"]
        details = artefact["details"]
        assert details["check"]["max_rel"] < 1e-2, "the float IR against torch"
        int8 = details["int8_check"]["max_rel"] <= details["int8_tolerance"]
        assert details["weights"] == ("int8" if int8 else "fp16")
        folder = f"{name}.openvino-int8" if int8 else f"{name}.openvino"
        assert artefact["path"] == f"{folder}/model.xml" and set(artefact["files"]) == {f"{folder}/model.xml", f"{folder}/model.bin"}
        assert sorted(p.name for p in openvino_engines.glob(f"{name}.openvino*")) == [folder], "the one not chosen is removed"
    assert data["components"]["text_encoder_2"]["openvino"]["details"]["check"]["shape"] in ("3x77x32", "3x32")


def test_the_engine_runs_the_text_encoders_from_the_ir_and_never_loads_torch_ones(
    openvino_engines: Path, presets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embeddings are torch's within the int8 tolerance the build recorded; no CLIP weights are read."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from engines.backends.openvino_engine import OpenVINOTextEncoders
    from engines.models.sources import load_components

    components = load_components("tiny", torch.float32, presets_dir)
    reference = TorchTextEncoders(components.tokenizer, components.tokenizer_2, components.text_encoder, components.text_encoder_2)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a CLIP text encoder was loaded in torch")

    for cls in (CLIPTextModel, CLIPTextModelWithProjection):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    engine = OpenVINOEngine("tiny", openvino_engines, Manifest.read(openvino_engines), "fp32", presets_dir)
    engine.load()
    try:
        encoders = engine.pipeline.text_encoder
        assert isinstance(encoders, OpenVINOTextEncoders)
        prompts = [EXAMPLE_PROMPT, "", "a red bicycle " * 20]
        (hidden, pooled), (expected_hidden, expected_pooled) = encoders.encode(prompts), reference.encode(prompts)
    finally:
        engine.close()
    tolerance = Manifest.read(openvino_engines).components["text_encoder"].openvino.details["int8_tolerance"]
    for got, expected in ((hidden, expected_hidden), (pooled, expected_pooled)):
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1.5 * tolerance * expected.abs().max()


def test_a_build_from_before_text_encoder_ir_serves_with_torch_text_encoders(
    openvino_engines: Path, presets_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its images keep their old engine name (no `-text-` part: the old cache keys), and the log says how to rebuild."""
    copy = tmp_path / "engines"
    shutil.copytree(openvino_engines, copy)
    data = json.loads((copy / "manifest.json").read_text())
    del data["components"]["text_encoder"], data["components"]["text_encoder_2"]
    (copy / "manifest.json").write_text(json.dumps(data))
    engine = OpenVINOEngine("tiny", copy, Manifest.read(copy), "fp32", presets_dir, static_sizes=())
    assert engine.info.name == "openvino-cpu-f32"
    with caplog.at_level("WARNING"):
        engine.load()
    try:
        assert isinstance(engine.pipeline.text_encoder, TorchTextEncoders)
        assert "holds no text encoder IR: the text encoders run in torch; rebuild with `python build_engines.py" in caplog.text
        assert engine.generate(REQUESTS[:1])[0].std() > 1
    finally:
        engine.close()


# --- static shapes where they pay -----------------------------------------------------------------


def test_static_sizes_default_to_the_base_size_and_are_part_of_the_name(openvino_engines: Path, presets_dir: Path) -> None:
    manifest = Manifest.read(openvino_engines)
    engine = OpenVINOEngine("tiny", openvino_engines, manifest, "fp32", presets_dir)
    assert engine.static_sizes == ((512, 512),) and engine.info.name.endswith("-static-512x512")
    two = OpenVINOEngine("tiny", openvino_engines, manifest, "fp32", presets_dir, static_sizes=((768, 512), (512, 512)))
    assert two.info.name.endswith("-static-512x512-768x512")
    assert "-static" not in OpenVINOEngine("tiny", openvino_engines, manifest, "fp32", presets_dir, static_sizes=()).info.name


def test_each_item_runs_the_static_compile_of_its_size_else_the_dynamic_one(openvino_engines: Path, presets_dir: Path) -> None:
    """A static size and another size, against the dynamic compile alone: the same picture (f32: at
    most one level on a pixel), and the other size exactly the same bytes."""
    manifest = Manifest.read(openvino_engines)
    requests = [GenerationRequest(prompt=EXAMPLE_PROMPT, seed=42), GenerationRequest(prompt=EXAMPLE_PROMPT, seed=42, width=384, height=256)]
    images = {}
    for static_sizes in (((512, 512),), ()):
        engine = OpenVINOEngine("tiny", openvino_engines, manifest, "fp32", presets_dir, static_sizes=static_sizes)
        engine.load()
        try:
            images[static_sizes] = [engine.generate([r])[0].astype(np.int16) for r in requests]
            runs = {name: dict(runner.runs) for name, runner in (("unet", engine.pipeline.unet), ("vae", engine.pipeline.vae_decoder))}
        finally:
            engine.close()
        expected = {"static": 1, "dynamic": 1} if static_sizes else {"dynamic": 2}
        assert runs == {"unet": expected, "vae": expected}, static_sizes
    (static_512, dynamic_384), (dynamic_512, dynamic_384_alone) = images[((512, 512),)], images[()]
    assert np.array_equal(dynamic_384, dynamic_384_alone)
    assert np.abs(static_512 - dynamic_512).max() <= 1


def test_static_sizes_outside_what_the_engine_serves_are_refused_naming_the_flag(openvino_engines: Path, presets_dir: Path) -> None:
    with pytest.raises(EngineUnavailable) as caught:
        OpenVINOEngine("tiny", openvino_engines, Manifest.read(openvino_engines), "fp32", presets_dir, static_sizes=((512, 512), (500, 512), (2048, 512)))
    assert str(caught.value) == "--static-sizes: 500x512, 2048x512 outside what this engine serves (multiples of 16 from 256 to 1024)"


def test_the_service_refuses_bad_static_sizes_at_start_with_one_line(openvino_engines: Path, presets_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", "tiny", "--engine-dir", str(openvino_engines), "--presets-dir", str(presets_dir),
         "--static-sizes", "500x500", "--port", str(free_port()), "--cache-dir", str(tmp_path / "c")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON lines are logs
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert errors == ["error: --static-sizes: 500x500 outside what this engine serves (multiples of 16 from 256 to 1024)"], errors


# --- start-up: a second start redoes nothing ------------------------------------------------------


def test_a_second_start_compiles_nothing(openvino_engines: Path, presets_dir: Path, tmp_path: Path) -> None:
    """The first start in a fresh engine directory compiles and caches every model (static ones
    included); the second reads every one from the cache and builds no text encoder."""
    copy = tmp_path / "engines"
    shutil.copytree(openvino_engines, copy, ignore=shutil.ignore_patterns(COMPILED_CACHE))
    counts = []
    for _ in range(2):
        COMPILES.clear()
        engine = OpenVINOEngine("tiny", copy, Manifest.read(copy), "fp32", presets_dir)
        engine.load()
        engine.close()
        counts.append(dict(COMPILES))
    # Two text encoders, the UNet and VAE decoder at 512x512 (static; their dynamic compiles wait
    # for another size), the VAE encoder.
    assert counts == [{"compiled": 5}, {"cached": 5}]


def test_a_load_without_text_encoders_builds_none_of_sdxl_randoms() -> None:
    """The OpenVINO engine's start: sdxl-random's tokenizers and configs only, not its 800 M random
    encoder parameters (seconds of work at every start)."""
    from engines.models.sources import load_components

    components = load_components("sdxl-random", torch.bfloat16, text_only=True, text_encoders=False)
    assert components.text_encoder is None and components.text_encoder_2 is None and components.unet is None
    assert components.tokenizer("a cat").input_ids and components.fingerprint
    with pytest.raises(ValueError, match="text_encoders=False: only with text_only=True"):
        load_components("sdxl-random", torch.bfloat16, text_encoders=False)
