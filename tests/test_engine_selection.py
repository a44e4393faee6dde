"""--engine auto|torch|onnxruntime|tensorrt, with the machine faked at its edges (the probe functions)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines import select
from engines.base import EngineUnavailable
from engines.core.hardware import GpuInfo
from engines.select import EngineRequest, select_engine
from tests.helpers import FAKE_GPU, FAKE_TENSORRT, REPO, write_fake_engines


@pytest.fixture
def machine(monkeypatch):
    """Set what the machine has: `machine(gpu=..., tensorrt=...)`; by default a CPU without TensorRT."""

    def fake(gpu: GpuInfo | None = None, tensorrt: str | None = None, unusable_gpu: str | None = None) -> None:
        monkeypatch.setattr(select, "probe_gpu", lambda: gpu)
        monkeypatch.setattr(select, "probe_tensorrt", lambda: tensorrt)
        monkeypatch.setattr(select, "probe_unusable_gpu", lambda: unusable_gpu)

    fake()
    return fake


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    write_fake_engines(tmp_path)
    return tmp_path


def choose(engine: str, engine_dir: Path, model: str = "tiny", device: str = "auto"):
    return select_engine(EngineRequest(engine=engine, model=model, engine_dir=engine_dir, device=device))


def test_auto_on_a_cpu_takes_pytorch_and_says_why(machine, engine_dir: Path) -> None:
    engine = choose("auto", engine_dir)
    assert engine.info.name.startswith("torch-")
    assert engine.info.selection_reason == (
        "auto: not TensorRT (no CUDA GPU is visible); not OpenVINO "
        f"({engine_dir}/manifest.json lists no openvino file for unet; rebuild with "
        f"`python build_engines.py --model tiny --out {engine_dir} --batch 1-4 --sizes 512x512,768x768 --target cpu`); "
        f"{engine.info.name} is the fastest other path here"
    )


def test_auto_without_tensorrt_installed(machine, engine_dir: Path) -> None:
    machine(gpu=GpuInfo(*FAKE_GPU))
    engine = choose("auto", engine_dir)
    assert engine.info.name.startswith("torch-")
    assert "TensorRT is not installed (on a GPU machine, `make serve` installs it" in engine.info.selection_reason


def test_auto_takes_tensorrt_when_gpu_tensorrt_and_manifest_match(machine, engine_dir: Path) -> None:
    machine(gpu=GpuInfo(*FAKE_GPU), tensorrt=FAKE_TENSORRT)
    engine = choose("auto", engine_dir)
    assert engine.info.name == "tensorrt-fp16-vae-tf32"
    assert engine.info.selection_reason == (
        f"auto: the TensorRT plans in {engine_dir} match this GPU, this TensorRT and the model"
    )
    # The built profile decides what the service accepts (a 422 names these sizes).
    assert engine.limits.sizes == ((512, 512), (768, 768)) and engine.limits.max_batch == 4
    assert engine.limits.size_multiple == 16


@pytest.mark.parametrize(
    ("gpu", "tensorrt", "change", "reason"),
    [
        (GpuInfo("NVIDIA L4", "8.9"), FAKE_TENSORRT, None, "built for NVIDIA H100 80GB HBM3 (compute capability 9.0)"),
        (GpuInfo(*FAKE_GPU), "10.9.0.34", None, f"built with TensorRT {FAKE_TENSORRT}, this is TensorRT 10.9.0.34"),
        (GpuInfo(*FAKE_GPU), FAKE_TENSORRT, "unet.plan", "unet.plan does not match manifest.json"),
        (GpuInfo(*FAKE_GPU), FAKE_TENSORRT, "manifest.json", "no manifest.json in"),
    ],
    ids=["other-gpu", "other-tensorrt", "changed-plan", "no-manifest"],
)
def test_auto_falls_back_to_pytorch_with_the_refusal_as_reason(machine, engine_dir: Path, gpu, tensorrt, change, reason) -> None:
    machine(gpu=gpu, tensorrt=tensorrt)
    if change == "manifest.json":
        (engine_dir / change).unlink()
    elif change:
        (engine_dir / change).write_bytes(b"tampered")
    engine = choose("auto", engine_dir)
    assert engine.info.name.startswith("torch-")
    assert reason in engine.info.selection_reason
    assert "python build_engines.py --model tiny" in engine.info.selection_reason


def test_auto_refuses_engines_of_another_model(machine, engine_dir: Path) -> None:
    machine(gpu=GpuInfo(*FAKE_GPU), tensorrt=FAKE_TENSORRT)
    engine = choose("auto", engine_dir, model="sdxl-random")
    assert engine.info.name.startswith("torch-")
    assert "built for the model tiny (preset:tiny-v1-seed0), not sdxl-random" in engine.info.selection_reason


def test_torch_when_asked(machine, engine_dir: Path) -> None:
    engine = choose("torch", engine_dir)
    assert engine.info.name.startswith("torch-") and engine.info.selection_reason == "asked for with --engine torch"


def test_tensorrt_when_asked_on_a_machine_without_a_gpu_fails_clearly(machine, engine_dir: Path) -> None:
    with pytest.raises(EngineUnavailable, match="^--engine tensorrt cannot run here: no CUDA GPU is visible$"):
        choose("tensorrt", engine_dir)


def test_device_cpu_keeps_auto_off_the_gpu(machine, engine_dir: Path) -> None:
    machine(gpu=GpuInfo(*FAKE_GPU), tensorrt=FAKE_TENSORRT)
    engine = choose("auto", engine_dir, device="cpu")
    assert engine.info.name.startswith("torch-cpu-")
    assert "not TensorRT (--device cpu asks for the CPU)" in engine.info.selection_reason


def test_tensorrt_when_asked_with_a_changed_plan_fails_clearly(machine, engine_dir: Path) -> None:
    machine(gpu=GpuInfo(*FAKE_GPU), tensorrt=FAKE_TENSORRT)
    (engine_dir / "vae_decoder.plan").write_bytes(b"tampered")
    with pytest.raises(EngineUnavailable, match="cannot run here: .*vae_decoder.plan does not match manifest.json"):
        choose("tensorrt", engine_dir)


def test_onnxruntime_from_a_real_build(machine, onnx_engines: Path) -> None:
    engine = choose("onnxruntime", onnx_engines, device="cpu")  # the same name with onnxruntime-gpu installed
    assert engine.info.name == "onnxruntime-cpu-fp32"
    assert engine.info.selection_reason == "asked for with --engine onnxruntime"
    assert engine.limits.size_multiple == 16 and engine.limits.sizes is None  # dynamic axes: a range


def test_onnxruntime_refuses_a_changed_graph(machine, onnx_engines: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(onnx_engines, tmp_path / "engines")
    with (copy / "unet" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(EngineUnavailable, match="unet/model.onnx does not match manifest.json.*--onnx-only"):
        choose("onnxruntime", copy)


def test_onnxruntime_without_engines_says_how_to_build_them(machine, tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable) as refused:
        choose("onnxruntime", tmp_path / "nothing")
    assert f"`python build_engines.py --model tiny --out {tmp_path / 'nothing'} --onnx-only`" in str(refused.value)


def test_an_engine_this_build_lacks(machine, engine_dir: Path) -> None:
    with pytest.raises(EngineUnavailable, match="--engine magic is not available in this build"):
        choose("magic", engine_dir)


def test_openvino_asked_for_without_a_cpu_build_says_how_to_make_one(machine, engine_dir: Path) -> None:
    with pytest.raises(EngineUnavailable, match="--engine openvino cannot run here: .* --target cpu`"):
        choose("openvino", engine_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is the one of a machine without a GPU")
def test_the_service_refuses_tensorrt_at_start_up_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", "tiny", "--engine", "tensorrt", "--engine-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: --engine tensorrt cannot run here: no CUDA GPU is visible"
    assert "Traceback" not in result.stderr


def test_a_gpu_that_cannot_be_used_is_said_loudly(machine, engine_dir: Path, caplog) -> None:
    problem = "NVIDIA driver 550.54.15 is too old: the GPU environment is built for CUDA 13 (...)"
    machine(unusable_gpu=problem)
    with caplog.at_level("WARNING", logger=select.__name__):
        engine = choose("auto", engine_dir)
    assert engine.info.name.startswith("torch-cpu")
    assert engine.info.selection_reason.startswith(f"auto: THE GPU IS NOT USED: {problem}")
    assert [r.levelname for r in caplog.records if "THE GPU IS NOT USED" in r.getMessage()] == ["WARNING"]
    with pytest.raises(EngineUnavailable, match="--engine tensorrt cannot run here: NVIDIA driver 550.54.15 is too old"):
        choose("tensorrt", engine_dir)


def test_an_unusable_gpu_is_read_from_the_driver_and_torch(monkeypatch) -> None:
    monkeypatch.setattr(select, "probe_gpu", lambda: None)
    monkeypatch.setattr(select, "nvidia_driver_version", lambda: "550.54.15")
    assert "driver 550.54.15 is too old" in select.probe_unusable_gpu()
    monkeypatch.setattr(select, "nvidia_driver_version", lambda: "580.65.06")
    assert select.probe_unusable_gpu().startswith("an NVIDIA GPU is present (driver 580.65.06) but torch")
    monkeypatch.setattr(select, "nvidia_driver_version", lambda: None)
    assert select.probe_unusable_gpu() is None
