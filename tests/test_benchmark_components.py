"""The components section: it times the build's own files when given one, and skips what would not fit in memory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks import components as components_module
from benchmarks import engine_runners
from benchmarks.components import BackendSkipped, ComponentsSection, LoadedModel, compiled_hook
from benchmarks.engine_runners import HOOKS
from benchmarks.memory_fit import HEADROOM_BYTES, available_bytes, shortfall
from benchmarks.plan import QUICK
from engines.backends.torch_runners import build_torch_pipeline
from engines.core.numerics import choose_numerics
from engines.manifest import Manifest
from engines.models.sources import load_components

FULL_UNET_WEIGHTS = 2_567_463_684  # the SDXL UNet's parameter count


def test_a_component_that_fits_runs_and_one_that_does_not_is_skipped_with_its_need() -> None:
    need = HOOKS["openvino"].load_bytes("fp32", FULL_UNET_WEIGHTS)
    assert need == pytest.approx(15.4e9, rel=0.01)  # the f32 copy and the fp16 IR it read: 6 bytes a weight
    assert shortfall("running the unet", need, 20e9) is None
    note = shortfall("running the unet", need, 12e9)
    assert note == ("running the unet needs about 15.4 GB (+2.1 GB headroom) and this machine has 12.0 GB available "
                    "(MemAvailable)")
    assert shortfall("running the unet", need, need + HEADROOM_BYTES) is None  # the edge fits
    assert shortfall("running the unet", need, need + HEADROOM_BYTES - 1) is not None
    assert shortfall("running the unet", need, None) is None  # nothing known: run, as before this check
    assert HOOKS["openvino"].load_bytes("bf16", FULL_UNET_WEIGHTS) < need
    assert HOOKS["onnxruntime"].load_bytes("fp32", FULL_UNET_WEIGHTS) == pytest.approx(13.9e9, rel=0.01)


def test_making_a_file_counts_the_cast_to_float32_and_the_makers_copy() -> None:
    bf16 = torch.nn.Linear(100, 10, bias=False, device="meta", dtype=torch.bfloat16)  # no memory: shapes only
    fp32 = torch.nn.Linear(100, 10, bias=False, device="meta")
    # bf16 -> fp32 in place adds 2 bytes a weight; the ONNX exporter holds 12.5 beside it.
    assert HOOKS["onnxruntime"].make_bytes(bf16) == 1000 * 2 + 12_500
    assert HOOKS["onnxruntime"].make_bytes(fp32) == 12_500
    assert HOOKS["openvino"].make_bytes(fp32) == 3_800


def test_a_backend_without_a_hook_for_the_precision_is_skipped_not_failed() -> None:
    assert compiled_hook("openvino", "bf16") is HOOKS["openvino"]
    with pytest.raises(BackendSkipped, match="times it in fp32 only, not fp16"):
        compiled_hook("onnxruntime", "fp16")  # a GPU run: the hook runs the CPU's fp32 graphs
    with pytest.raises(BackendSkipped, match="no hook for tensorrt"):
        compiled_hook("tensorrt", "fp16")


def test_available_memory_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\n")
    assert available_bytes(meminfo) == 12_000_000 * 1024
    assert available_bytes(tmp_path / "absent") is None


def test_a_backend_that_would_not_fit_is_skipped_with_a_note_and_the_torch_weights_are_released(
    presets_dir: Path, openvino_engines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 1 GB available: the ONNX export (files made here) and the OpenVINO runners (the build's
    files) are skipped with notes, never attempted; the torch rows stand."""
    numerics = choose_numerics("cpu", "fp32")
    components = load_components("tiny", torch.float32, presets_dir)
    loaded = LoadedModel("tiny", components, numerics, build_torch_pipeline(components, numerics), tmp_path, openvino_engines)
    plan = dataclasses.replace(QUICK, peak_sizes=(64,), peak_repeats=1, component_repeats=1, bandwidth_megabytes=8)
    backends = {"torch": ["fp32"], "onnxruntime": ["fp32"], "openvino": ["fp32"]}
    section = ComponentsSection(loaded, backends, plan, {}, encode_images=False).time_torch()
    for module in (components_module, engine_runners):
        monkeypatch.setattr(module, "available_bytes", lambda: 10**9)
    result = section.finish()

    assert result["errors"] == {}
    assert {(r["component"], r["backend"]) for r in result["rows"]} == {
        ("text_encoders", "torch"), ("unet_step", "torch"), ("vae_decode", "torch")}
    notes = "\n".join(result["notes"])
    assert "making the unet onnx file needs about" in notes and "1.0 GB available (MemAvailable)" in notes
    assert "openvino fp32 unet_step: skipped, running the unet" in notes
    assert "openvino fp32 vae_decode: skipped, running the vae_decoder" in notes
    assert not any((tmp_path / "onnxruntime").rglob("*.onnx"))
    for module in (components.unet, components.vae, components.text_encoder, components.text_encoder_2):
        assert {p.device.type for p in module.parameters()} == {"meta"}  # released before any runtime loads


def test_given_an_openvino_build_the_openvino_rows_time_its_ir(openvino_quick_run: dict[str, Path], openvino_engines: Path) -> None:
    """`--engine-dir` with a --target cpu build: OpenVINO's rows run that build's IR (path and manifest
    key in the row), not a conversion; ONNX Runtime, which the build lacks, is exported in the run."""
    results = json.loads(openvino_quick_run[".json"].read_text())
    assert results["errors"] == {}
    manifest = Manifest.read(openvino_engines)
    rows = {(r["component"], r["backend"]): r for r in results["components"]}
    for component, name in (("unet_step", "unet"), ("vae_decode", "vae_decoder")):
        artefact = manifest.artefact(openvino_engines, name, "openvino")
        files = rows[(component, "openvino")]["files"]
        assert files["path"] == str(openvino_engines / artefact.path) and files["key"] == artefact.key
        assert rows[(component, "openvino")]["runner"] == "OpenVINORunner"
        made = rows[(component, "onnxruntime")]["files"]
        assert made["key"] is None and "made in this run" in made["source"]
    assert any(f"timed on the openvino files of the build in {openvino_engines}" in note for note in results["notes"])
    markdown = openvino_quick_run[".md"].read_text()
    assert f"`{openvino_engines / 'unet.openvino' / 'model.xml'}` (manifest key" in markdown
