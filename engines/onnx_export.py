"""torch -> ONNX for the UNet and the VAE decoder, and a numerical check of the result in ONNX Runtime.

The exported graphs take and return exactly what the loop's runners do (`pipeline.UNetRunner`,
`pipeline.VAEDecoderRunner`), in float32, with dynamic batch, height and width; the names and axes
come from `engines.components`. Graphs over protobuf's 2 GB limit keep their weights in one
external data file beside them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.components import UNET, VAE_DECODER, ComponentSpec, ModelDims
from engines.modules import UNetModule, VAEDecoderModule
from engines.manifest import file_sha256
from engines.presets import SDXLComponents

logger = logging.getLogger(__name__)

OPSET = 17
# Bump when the wrappers or the export settings change: it is part of every export's key.
EXPORT_FORMAT = 1
ONNX_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # a margin for the graph itself


def export_modules(components: SDXLComponents) -> dict[str, torch.nn.Module]:
    """The modules to export, by component name; they must be float32."""
    return {UNET: UNetModule(components.unet).eval(), VAE_DECODER: VAEDecoderModule(components.vae).eval()}


def model_dims(components: SDXLComponents) -> ModelDims:
    return ModelDims.from_unet_config(components.unet.config)


def trace_size(dims: ModelDims) -> tuple[int, int]:
    """512x512 where the model allows it: the size SDXL Turbo is made for."""
    return (512, 512) if 512 % dims.size_multiple == 0 else (dims.size_multiple * 8,) * 2


def check_size(dims: ModelDims) -> tuple[int, int]:
    """A non-square size unlike the traced one: a shape baked in by mistake shows up as an error."""
    return (dims.size_multiple * 12, dims.size_multiple * 8)


@dataclass(frozen=True)
class NumericCheck:
    """How far the exported graph is from torch on the same inputs."""

    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|
    shape: str

    def describe(self) -> str:
        return f"max abs error {self.max_abs:.3g}, max relative error {self.max_rel:.3g} at {self.shape}"

    def to_json(self) -> dict[str, float | str]:
        return asdict(self)


def compare(actual: np.ndarray, expected: np.ndarray) -> NumericCheck:
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} against {expected.shape}")
    error = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    scale = float(np.max(np.abs(expected))) or 1.0
    return NumericCheck(error, error / scale, "x".join(map(str, expected.shape)))


def export_onnx(module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, directory: Path) -> Path:
    """Export `module` to `directory`/model.onnx (plus model.onnx.data past 2 GB); returns the graph's path.

    Writes into a staging directory first: an interrupted export leaves the old files or none.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        traced = staging / "traced"
        traced.mkdir()
        width, height = trace_size(dims)
        # Batch 2: a batch of 1 lets the tracer fold batch-sized broadcasts into constants.
        samples = spec.sample_inputs(batch=2, width=width, height=height)
        with torch.no_grad(), warnings.catch_warnings():
            # diffusers branches on shapes in Python (TracerWarning); the legacy exporter says it is
            # legacy (DeprecationWarning). The first is why components.ModelDims.size_multiple exists;
            # the second is a choice: the torch.export-based exporter needs onnxscript and cannot yet
            # trace diffusers' shape checks with dynamic sizes.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                tuple(samples[name] for name in spec.input_names),
                str(traced / ONNX_FILE),
                dynamo=False,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
            )
        final = staging / "final"
        final.mkdir()
        _save_consolidated(traced / ONNX_FILE, final)
        if directory.exists():
            shutil.rmtree(directory)
        final.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory / ONNX_FILE


def _save_consolidated(traced: Path, directory: Path) -> None:
    """One file, or one graph file and one data file past protobuf's limit (the tracer may write many)."""
    import onnx

    size = sum(p.stat().st_size for p in traced.parent.iterdir())
    model = onnx.load(str(traced), load_external_data=True)
    if size < PROTOBUF_LIMIT:
        onnx.save_model(model, str(directory / ONNX_FILE))
    else:
        onnx.save_model(
            model,
            str(directory / ONNX_FILE),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=EXTERNAL_DATA_FILE,
            size_threshold=1024,
        )


def files_with_hashes(directory: Path, root: Path) -> dict[str, str]:
    """{path relative to root: SHA-256} for every file of an exported component."""
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


def onnxruntime_session(path: Path, providers: list[str] | None = None, threads: int = 0) -> Any:
    """An ONNX Runtime session with warnings kept out of the log (ORT prints to stderr otherwise)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def check_onnx(path: Path, module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, batch: int = 1) -> NumericCheck:
    """Run the graph in ONNX Runtime on the CPU and torch on the same inputs; returns the difference."""
    width, height = check_size(dims)
    samples = spec.sample_inputs(batch=batch, width=width, height=height, seed=1)
    with torch.no_grad():
        expected = module(*(samples[name] for name in spec.input_names)).float().numpy()
    session = onnxruntime_session(path)
    actual = session.run(spec.output_names[:1], {name: t.numpy() for name, t in samples.items()})[0]
    return compare(actual, expected)
