"""build_engines.py as a user runs it: idempotence, repair of a changed file, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import build_engines
from engines.manifest import Manifest
from tests.helpers import run_build_engines


@pytest.fixture
def engines_copy(onnx_engines: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(onnx_engines, tmp_path / "engines", copy_function=shutil.copy2))


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.rglob("*")) if p.is_file()}


def onnx_only(out: Path, presets_dir: Path, *extra: str) -> list[str]:
    return ["--model", "tiny", "--out", str(out), "--onnx-only", "--presets-dir", str(presets_dir), *extra]


def test_the_first_build_wrote_graphs_and_a_manifest(onnx_engines: Path) -> None:
    manifest = Manifest.read(onnx_engines)
    assert sorted(p.name for p in onnx_engines.iterdir()) == ["manifest.json", "unet", "vae_decoder", "vae_encoder"]
    assert manifest.gpu is None and manifest.versions["tensorrt"] is None
    for name, entry in manifest.components.items():
        assert entry.plan is None
        assert entry.onnx.details["check"]["max_rel"] < 1e-4, name  # checked against torch while built
    manifest.verify_files(onnx_engines, "onnx")


def test_a_second_run_changes_nothing(engines_copy: Path, presets_dir: Path) -> None:
    before = snapshot(engines_copy)
    result = run_build_engines(onnx_only(engines_copy, presets_dir))
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr and "exporting unet to ONNX: up to date" in result.stderr
    assert snapshot(engines_copy) == before  # not even the manifest was rewritten


def test_a_changed_graph_is_made_again_and_only_it(engines_copy: Path, presets_dir: Path) -> None:
    unet_before = snapshot(engines_copy / "unet")
    (engines_copy / "vae_decoder" / "model.onnx").write_bytes(b"not a graph")
    result = run_build_engines(onnx_only(engines_copy, presets_dir))
    assert result.returncode == 0, result.stderr
    assert "vae_decoder/model.onnx changed since it was built; making it again" in result.stderr
    assert "[1/3] exporting unet to ONNX: up to date" in result.stderr
    assert "[2/3] exporting vae_encoder to ONNX: up to date" in result.stderr
    assert "[3/3] exporting vae_decoder to ONNX: done" in result.stderr
    assert snapshot(engines_copy / "unet") == unet_before
    Manifest.read(engines_copy).verify_files(engines_copy, "onnx")


def test_sizes_the_model_cannot_take_are_refused_with_the_rule(engines_copy: Path, presets_dir: Path) -> None:
    result = run_build_engines(onnx_only(engines_copy, presets_dir, "--sizes", "512x512,520x520"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: sizes: every side must be a positive multiple of 16, got [520] (this model's images must be multiples of 16)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "0"], "'0': batch sizes go from 1 to 64"),
        (["--batch", "a-b"], "expected a batch size such as 1 or a range such as 1-4"),
        (["--sizes", "512"], "'512': expected WIDTHxHEIGHT"),
        (["--sizes", "512x512", "--min-size", "256"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        build_engines.main(["--model", "tiny", "--out", str(tmp_path), "--onnx-only", *args])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is the one of a machine without a GPU")
def test_a_full_build_without_a_gpu_stops_with_one_clear_line(tmp_path: Path) -> None:
    result = run_build_engines(["--model", "tiny", "--out", str(tmp_path)])
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: building TensorRT plans needs an NVIDIA GPU with CUDA, and torch sees none here; "
        "add --onnx-only to export the ONNX graphs for the ONNX Runtime backend"
    )
    assert list(tmp_path.iterdir()) == []  # it stopped before any work
