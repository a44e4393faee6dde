"""The golden self-test: a built engine that no longer makes the image its build recorded keeps
/readyz at 503 with the reason, even when every file's hash matches its manifest."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from engines.core.files import file_sha256
from engines.core.golden import GoldenImage, self_test_problem
from engines.manifest import Manifest
from tests.helpers import ServiceProcess, request


def noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8)


def test_an_image_passes_against_its_own_golden_copy_and_fails_against_another() -> None:
    image = noise(1)
    golden = GoldenImage.from_json(GoldenImage.of(image, "openvino-cpu-f32").to_json())
    assert self_test_problem(image, golden, "openvino-cpu-f32") is None
    smooth = np.repeat(np.linspace(0, 255, 512, dtype=np.uint8)[None, :, None], 512, axis=0).repeat(3, axis=2)
    problem = self_test_problem(smooth, golden, "openvino-cpu-f32")
    assert problem is not None and "no longer makes the image its build recorded" in problem


@pytest.mark.parametrize("value", [0, 255])
def test_a_flat_image_fails_without_a_build(value: int) -> None:
    """The PyTorch path has no golden image: a black (NaN turned to 0) or white image still fails."""
    problem = self_test_problem(np.full((512, 512, 3), value, np.uint8), None, "torch-cpu-fp32")
    assert problem is not None and "flat" in problem
    assert self_test_problem(noise(2), None, "torch-cpu-fp32") is None


def negate_f16_weights(ir_xml: Path) -> int:
    """Flip the sign of every fp16 constant of an OpenVINO IR in place; returns how many were changed."""
    weights = bytearray((ir_xml.with_suffix(".bin")).read_bytes())
    changed = 0
    for offset, size in re.findall(r'element_type="f16"[^>]*?offset="(\d+)"[^>]*?size="(\d+)"', ir_xml.read_text()):
        start, count = int(offset), int(size) // 2
        view = np.frombuffer(weights, dtype=np.float16, count=count, offset=start).copy()
        weights[start : start + 2 * count] = (-view).tobytes()
        changed += count
    ir_xml.with_suffix(".bin").write_bytes(bytes(weights))
    return changed


def rehash(directory: Path) -> None:
    """Make the manifest agree with the files again: only the self-test can tell now."""
    manifest = Manifest.read(directory)
    for entry in manifest.components.values():
        for artefact in (entry.onnx, entry.openvino, entry.plan, entry.typed_onnx):
            if artefact is not None:
                artefact.files = {relative: file_sha256(directory / relative) for relative in artefact.files}
    manifest.write(directory)


def test_the_intact_build_passes_its_self_test(openvino_engines: Path, presets_dir: Path) -> None:
    from engines.select import EngineRequest, select_engine

    engine = select_engine(EngineRequest("openvino", "tiny", openvino_engines, presets_dir=presets_dir))
    assert engine.golden is not None, "build_engines.py recorded no golden image"
    engine.load()
    try:
        engine.warm_up()  # raises SelfTestFailed when the image differs
    finally:
        engine.close()


@pytest.mark.slow
def test_an_engine_with_altered_weights_stays_unready_with_the_reason(openvino_engines: Path, presets_dir: Path, tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    shutil.copytree(openvino_engines, engines)
    # The VAE decoder: the tiny model's random UNet barely moves a one-step image, its decoder makes it.
    assert negate_f16_weights(engines / "vae_decoder.openvino" / "model.xml") > 1000
    rehash(engines)
    args = ["--model", "tiny", "--engine", "openvino", "--engine-dir", str(engines), "--presets-dir", str(presets_dir),
            "--cache-dir", str(tmp_path / "images")]
    service = ServiceProcess(args)
    try:
        deadline = time.monotonic() + 180
        state = None
        while time.monotonic() < deadline and service.process.poll() is None:
            reply = request(service.base_url, "GET", "/readyz") if _listening(service) else None
            state = None if reply is None else reply.json()
            if state is not None and state["state"] not in ("loading", "warming_up"):
                break
            time.sleep(0.2)
        assert state is not None, service.log()
        assert state["state"] == "self_test_failed", state
        assert reply.status == 503
        assert "no longer makes the image its build recorded" in state["detail"]
        metrics = request(service.base_url, "GET", "/metrics").body.decode()
        assert "sdxl_self_test_passed 0.0" in metrics
        generated = request(service.base_url, "POST", "/generate-image", json_body={"prompt": "a cat"})
        assert generated.status == 503  # nobody gets the broken engine's images
    finally:
        assert service.stop() == 0, service.log()


def _listening(service: ServiceProcess) -> bool:
    from benchmarks.launcher import http_status

    return http_status(service.base_url + "/healthz") == 200
