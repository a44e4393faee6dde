"""The int8 CPU path: build_engines.py --target cpu --precision int8 on the tiny model, its measured
quality in the manifest, the refusal past the threshold, and serving it opt-in over HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from engines.base import EngineUnavailable
from engines.build.openvino_int8 import DEFAULT_SAMPLES, MIN_PSNR_DB, image_error, nncf_statistics_in
from engines.core.numerics import openvino_float_hint
from engines.select import EngineRequest, select_engine
from tests.helpers import (
    EXAMPLE_PROMPT, ServiceProcess, generate, request, run_build_engines, run_quick_benchmark, running_service,
)

pytest.importorskip("nncf", reason="the int8 build needs NNCF: pip install '.[openvino]'")


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("openvino-int8")
    result = run_build_engines(
        # Calibrated at 256x256: a quarter of the work of 512x512 on a shared test machine.
        ["--model", "tiny", "--out", str(out), "--target", "cpu", "--precision", "int8", "--sizes", "256x256",
         "--presets-dir", str(presets_dir)],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stderr


def test_the_int8_build_records_its_image_error_against_the_float_images(int8_build: tuple[Path, str]) -> None:
    out, log = int8_build
    unet = json.loads((out / "manifest.json").read_text())["components"]["unet"]
    assert unet["openvino"]["path"] == "unet.openvino/model.xml"  # the float IR stays: it is the reference
    int8 = unet["openvino_int8"]
    assert int8["path"] == "unet.openvino-int8/model.xml"
    quality = int8["details"]["quality"]
    assert quality["usable"] and quality["min_psnr_db"] == MIN_PSNR_DB and quality["images"] == 4
    assert quality["psnr_db"] is None or quality["psnr_db"] >= MIN_PSNR_DB
    assert 0 <= quality["mean_abs"] <= quality["max_abs"] <= 255
    details = int8["details"]
    assert details["calibration"]["unet_inputs"] == details["samples"] == DEFAULT_SAMPLES  # bounded, and reached
    assert 0 < details["calibration"]["vae_inputs"] < DEFAULT_SAMPLES  # one per image, at 1 to 4 steps each
    assert details["mode"] == "hybrid" and details["calibrated_in"] == openvino_float_hint("int8")
    assert "calibration inputs: 32/32 UNet inputs" in log and " s left" in log  # progress with an estimate
    assert len(int8["details"]["kept_in_float"]) == 2  # the first and the last convolution
    assert "int8 build quality (threshold 20 dB): " in log and " dB, mean |error| " in log
    assert int8["details"]["vae_decoder"] in ("int8", "float")


def test_the_quantized_ir_holds_int8_weights(int8_build: tuple[Path, str]) -> None:
    import openvino as ov

    model = ov.Core().read_model(int8_build[0] / "unet.openvino-int8" / "model.xml")
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def _ops_feeding(model: object, kind: str) -> list[set[str]]:
    """For every op of type `kind`, the types of the ops that feed it."""
    return [{value.get_node().get_type_name() for value in op.input_values()} for op in model.get_ops() if op.get_type_name() == kind]


def test_the_hybrid_mode_keeps_matmuls_in_float_with_int8_weights_and_full_mode_quantizes_them(
    int8_build: tuple[Path, str], presets_dir: Path, tmp_path: Path
) -> None:
    import openvino as ov

    copy = tmp_path / "engines"
    shutil.copytree(int8_build[0], copy)
    result = run_build_engines(
        ["--model", "tiny", "--out", str(copy), "--target", "cpu", "--precision", "int8", "--sizes", "256x256",
         "--presets-dir", str(presets_dir), "--int8-mode", "full", "--calibration-samples", "6"],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "converting unet to OpenVINO IR: up to date" in result.stderr  # only the int8 step is made again
    details = json.loads((copy / "manifest.json").read_text())["components"]["unet"]["openvino_int8"]["details"]
    assert details["mode"] == "full" and details["calibration"]["unet_inputs"] == 6
    hybrid = ov.Core().read_model(int8_build[0] / "unet.openvino-int8" / "model.xml")
    full = ov.Core().read_model(copy / "unet.openvino-int8" / "model.xml")
    # full: MatMul activations pass through FakeQuantize; hybrid: none do, their weights are int8 constants.
    assert any("FakeQuantize" in feeds for feeds in _ops_feeding(full, "MatMul"))
    assert not any("FakeQuantize" in feeds for feeds in _ops_feeding(hybrid, "MatMul"))
    assert any(op.get_type_name() == "Constant" and op.get_element_type() in (ov.Type.u8, ov.Type.i8) for op in hybrid.get_ops())
    assert any("FakeQuantize" in feeds for feeds in _ops_feeding(hybrid, "Convolution"))  # convolutions: int8 compute


def test_nncf_statistics_compile_in_the_float_arithmetic_the_service_serves() -> None:
    import openvino as ov
    from nncf.openvino.engine import OVNativeEngine

    parameter = ov.opset13.parameter([1, 4], ov.Type.f32)
    model = ov.Model([ov.opset13.relu(parameter)], [parameter])

    def hint() -> str:
        return OVNativeEngine(model).engine.infer_request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT").get_type_name()

    assert hint() == "f32"  # NNCF's own choice: a second f32 copy of the UNet
    with nncf_statistics_in(openvino_float_hint("int8")):
        assert hint() == openvino_float_hint("int8")
    assert hint() == "f32"  # restored


def test_a_build_past_the_threshold_is_refused_and_never_served(int8_build: tuple[Path, str], presets_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "engines"
    shutil.copytree(int8_build[0], copy)
    # The threshold is part of the int8 key, so this quantizes again: at 128x128, a quarter of the work
    # of the build above (no int8 build reaches 1000 dB at any size; the refusal is what is tested).
    result = run_build_engines(
        ["--model", "tiny", "--out", str(copy), "--target", "cpu", "--precision", "int8", "--sizes", "128x128",
         "--presets-dir", str(presets_dir), "--int8-min-psnr", "1000"],
        timeout=900,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the int8 images are too far from the float ones" in result.stderr and "below the 1000 dB of --int8-min-psnr" in result.stderr
    assert json.loads((copy / "manifest.json").read_text())["components"]["unet"]["openvino_int8"]["details"]["quality"]["usable"] is False
    with pytest.raises(EngineUnavailable, match="marked unusable"):
        select_engine(EngineRequest(engine="openvino", model="tiny", engine_dir=copy, precision="int8", presets_dir=presets_dir))


def test_int8_with_the_gpu_target_is_refused(tmp_path: Path) -> None:
    result = run_build_engines(["--model", "tiny", "--out", str(tmp_path), "--precision", "int8"])
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --precision int8 quantizes OpenVINO IR for the CPU: add --target cpu"


def test_int8_on_torch_is_refused_with_the_build_command(presets_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"int8 runs on the OpenVINO engine, from `python build_engines.py --target cpu --precision int8`"):
        select_engine(EngineRequest(engine="torch", model="tiny", engine_dir=tmp_path, precision="int8", presets_dir=presets_dir))


def test_int8_with_auto_and_no_int8_build_says_why(presets_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"--precision int8 runs on an OpenVINO int8 build only, and none can run here: no manifest.json"):
        select_engine(EngineRequest(engine="auto", model="tiny", engine_dir=tmp_path, precision="int8", presets_dir=presets_dir, device="cpu"))


def test_image_error_figures_and_verdict() -> None:
    reference = [np.zeros((4, 4, 3), np.uint8)]
    assert image_error(reference, reference, 20)["psnr_db"] is None and image_error(reference, reference, 20)["usable"]
    off_by_ten = [np.full((4, 4, 3), 10, np.uint8)]
    error = image_error(reference, off_by_ten, 20)
    assert error["mean_abs"] == error["max_abs"] == 10 and abs(error["psnr_db"] - 28.13) < 0.01 and error["usable"]
    assert not image_error(reference, off_by_ten, 30)["usable"]


@pytest.fixture(scope="module")
def int8_service(int8_build: tuple[Path, str], presets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(
        ["--model", "tiny", "--engine-dir", str(int8_build[0]), "--precision", "int8", "--presets-dir", str(presets_dir),
         "--cache-dir", str(tmp_path_factory.mktemp("int8-image-cache"))]
    ) as service:
        yield service


def test_the_service_serves_int8_images_when_asked(int8_service: ServiceProcess, int8_build: tuple[Path, str]) -> None:
    ready = request(int8_service.base_url, "GET", "/readyz").json()
    assert ready["engine"].startswith("openvino-cpu-int8")
    reply = generate(int8_service.base_url, {"prompt": EXAMPLE_PROMPT, "seed": 3})
    assert reply.status == 200 and reply.headers["x-engine"] == ready["engine"]
    assert reply.image().size == (512, 512) and np.asarray(reply.image()).std() > 1
    assert any(p.is_file() for p in (int8_build[0] / "compiled-cache").rglob("*"))  # the next start reads compiled blobs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8", "--int8-min-psnr", "-3"], "argument --int8-min-psnr: '-3': expected a positive number of dB, e.g. 20"),
        (["--int8-min-psnr", "30"], "--int8-min-psnr: applies to --precision int8 only"),
        (["--precision", "int8", "--calibration-samples", "0"],
         "argument --calibration-samples: '0': expected a whole number of UNet inputs from 1 to 1000, e.g. 32"),
        (["--calibration-samples", "8"], "--calibration-samples: applies to --precision int8 only"),
        (["--precision", "int8", "--int8-mode", "half"], "argument --int8-mode: invalid choice: 'half' (choose from 'full', 'hybrid')"),
    ],
)
def test_a_bad_int8_flag_is_refused_naming_the_flag(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_build_engines(["--model", "tiny", "--out", str(tmp_path), "--target", "cpu", *args])
    assert result.returncode == 2 and result.stderr.strip().endswith(message)


def test_the_benchmark_serves_the_int8_build_and_reports_its_error(int8_build: tuple[Path, str], presets_dir: Path, tmp_path: Path) -> None:
    files = run_quick_benchmark(tmp_path / "bench", presets_dir, "--sections", "int8", "--engine-dir", str(int8_build[0]))
    results = json.loads(files[".json"].read_text())
    assert results["errors"] == {}
    int8 = results["int8"]
    assert int8["engine"].startswith("openvino-cpu-int8") and "--precision" in int8["args"]
    assert int8["misses"]["ok"] == int8["misses"]["requests"] > 0 and int8["misses"]["x_cache"] == {"MISS": int8["misses"]["requests"]}
    assert int8["build"]["quality"]["usable"] and int8["build"]["seconds"] > 0 and int8["build"]["peak_rss_bytes"] > 2**20
    summary = results["summary"]
    assert summary["ours_int8_http_s"] == int8["misses"]["latency_s"]["p50"] > 0
    goals = {goal["key"]: goal for goal in summary["cpu_goals"]}
    assert goals["int8_service_peak_rss_bytes"]["value"] == int8["peak_rss_bytes"]
    assert goals["int8_build_s"]["met"] == (int8["build"]["seconds"] <= 20 * 60)
    report = files[".md"].read_text()
    assert "## The int8 build over HTTP" in report and "## The CPU path's goals" in report and "image error against the float build" in report
