"""ONNX export of the tiny UNet and VAE decoder: the graphs run in ONNX Runtime and match torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines.build import onnx_export
from engines.core.specs import UNET, VAE_DECODER, ModelDims
from engines.backends.onnxruntime_engine import onnxruntime_session
from engines.build.checks import compare
from engines.build.onnx_export import check_onnx, export_modules, export_onnx, model_dims
from engines.models.presets import build_tiny_components

TIGHT = 1e-4  # float32 against float32: differences are rounding only


@pytest.fixture(scope="module")
def tiny() -> tuple[dict[str, torch.nn.Module], ModelDims]:
    components = build_tiny_components()
    return export_modules(components), model_dims(components)


@pytest.fixture(scope="module")
def exported(onnx_engines: Path) -> dict[str, Path]:
    """The graphs the session's `build_engines.py --onnx-only` exported (export_onnx, from the same
    tiny weights): checked here against torch as the service will run them."""
    return {name: onnx_engines / name / "model.onnx" for name in (UNET, VAE_DECODER)}


@pytest.mark.parametrize("component", [UNET, VAE_DECODER])
def test_export_matches_torch_in_onnxruntime(tiny, exported, component: str) -> None:
    modules, dims = tiny
    check = check_onnx(exported[component], modules[component], dims.specs()[component], dims)
    assert check.max_rel < TIGHT, check.describe()
    # The check runs at a size and batch unlike the traced ones (2 x 512x512): the axes are dynamic.
    assert check.shape != "2x4x64x64"


@pytest.mark.parametrize("component", [UNET, VAE_DECODER])
def test_graph_names_and_axes_come_from_the_spec(tiny, exported, component: str) -> None:
    spec = tiny[1].specs()[component]
    graph = onnx.load(str(exported[component])).graph
    assert [i.name for i in graph.input] == spec.input_names
    assert [o.name for o in graph.output] == spec.output_names
    for value in [*graph.input, *graph.output]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        expected = [axis for axis in next(t.shape for t in spec.tensors() if t.name == value.name)]
        assert dims == expected, value.name


def test_large_graphs_keep_their_weights_in_one_external_file(tiny, tmp_path: Path, monkeypatch) -> None:
    """Past protobuf's 2 GB limit the weights go to model.onnx.data; forced here by lowering the limit.

    The export also replaces what was there before, and leaves no staging directory behind.
    """
    modules, dims = tiny
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 0)
    target = tmp_path / "vae_decoder"
    target.mkdir()
    (target / "stale.onnx.data").write_bytes(b"from an earlier export")
    path = export_onnx(modules[VAE_DECODER], dims.specs()[VAE_DECODER], dims, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae_decoder"]
    assert sorted(p.name for p in target.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert path.stat().st_size < 100_000  # the graph alone; the weights are next to it
    check = check_onnx(path, modules[VAE_DECODER], dims.specs()[VAE_DECODER], dims)
    assert check.max_rel < TIGHT


def test_the_session_reports_a_size_the_traced_unet_cannot_take(exported, tiny) -> None:
    """Why ModelDims.size_multiple exists: a latent side not divisible by the upsampling factor fails."""
    dims = tiny[1]
    spec = dims.specs()[UNET]
    samples = spec.sample_inputs(batch=1, width=dims.size_multiple * 4 + 8, height=dims.size_multiple * 4)
    session = onnxruntime_session(exported[UNET])
    with pytest.raises(Exception, match="(?i)concat"):
        session.run(None, {name: t.numpy() for name, t in samples.items()})


def test_compare_reports_absolute_and_relative_error() -> None:
    expected = np.array([[1.0, -4.0], [2.0, 0.0]], dtype=np.float32)
    actual = expected + np.array([[0.0, 0.5], [0.0, -0.1]], dtype=np.float32)
    check = compare(actual, expected)
    assert check.max_abs == pytest.approx(0.5) and check.max_rel == pytest.approx(0.125)
    assert check.shape == "2x2"
    with pytest.raises(ValueError, match="shapes differ"):
        compare(actual[:1], expected)
