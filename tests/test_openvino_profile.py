"""benchmarks.openvino_profile on the tiny build: every executed layer lands in one class, matrix
layers carry FLOPs from the runtime graph's shapes, and the command prints the tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")

from benchmarks.openvino_profile import matrix_flops, profile  # noqa: E402
from engines.core.specs import UNET, VAE_DECODER  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_matrix_flops_from_shapes() -> None:
    # A 3x3 convolution, 4 -> 8 channels, on 16x16: 2 * outputs * (inputs per output).
    assert matrix_flops("Convolution", [[1, 4, 16, 16], [8, 4, 3, 3]], [1, 8, 16, 16]) == 2 * 8 * 16 * 16 * 4 * 9
    assert matrix_flops("FullyConnected", [[1, 77, 32], [64, 32]], [1, 77, 64]) == 2 * 77 * 64 * 32
    assert matrix_flops("Convolution", [[1, 4, 16, 16], None], [1, 8, 16, 16]) is None  # a shape not known


@pytest.mark.parametrize("component, static", [(UNET, False), (VAE_DECODER, True)])
def test_every_layer_is_classed_and_timed(openvino_engines: Path, component: str, static: bool) -> None:
    result = profile(openvino_engines, component, "f32", 256, 256, static=static, repeats=1)
    categories = {row["category"]: row for row in result["categories"]}
    assert sum(row["share"] for row in categories.values()) == pytest.approx(1.0)
    assert sum(row["ms"] for row in categories.values()) == pytest.approx(result["layers_seconds"] * 1e3)
    matrix = [row for name, row in categories.items() if name.startswith("matrix")]
    assert matrix and all(row["gflops"] and row["gflops"] > 0 for row in matrix)
    assert "memory" in categories and categories["memory"]["memory_floor_ms"] > 0
    assert result["peak_gflops"] > 0 and result["bandwidth_gbs"] > 0
    assert len(result["slowest"]) == 15


def test_the_command_prints_the_tables(openvino_engines: Path, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.openvino_profile", "--engine-dir", str(openvino_engines), "--width", "256",
         "--height", "256", "--repeats", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| class | layers | ms | share |" in result.stdout and "| layer | kernel | ms | GFLOP/s |" in result.stdout
    assert out.is_file()
