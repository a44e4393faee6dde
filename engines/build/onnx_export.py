"""torch -> ONNX for the UNet and the VAE decoder and encoder, and a numerical check of the result in ONNX Runtime.

The exported graphs take and return exactly what the loop's runners do (`engines.core.pipeline.UNetRunner`,
`VAEDecoderRunner`), in float32, with dynamic batch, height and width; the names and axes
come from `engines.core.specs`. Graphs over protobuf's 2 GB limit keep their weights in one
external data file beside them.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
import warnings
from pathlib import Path

import torch

from engines.backends.onnxruntime_engine import onnxruntime_session
from engines.build.checks import NumericCheck, check_size, compare
from engines.core.files import replaced_directory
from engines.core.modules import UNetModule, VAEDecoderModule, VAEEncoderModule
from engines.core.specs import UNET, VAE_DECODER, VAE_ENCODER, ComponentSpec, ModelDims, trace_size
from engines.models.components import SDXLComponents

logger = logging.getLogger(__name__)

OPSET = 17
# Bump when the wrappers or the export settings change: it is part of every export's key.
EXPORT_FORMAT = 1
ONNX_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # a margin for the graph itself


def export_modules(components: SDXLComponents) -> dict[str, torch.nn.Module]:
    """The modules to export, by component name, with the UNet in the dtype it was loaded in."""
    return {
        UNET: UNetModule(components.unet).eval(),
        VAE_ENCODER: VAEEncoderModule(components.vae).eval(),
        VAE_DECODER: VAEDecoderModule(components.vae).eval(),
    }


def model_dims(components: SDXLComponents) -> ModelDims:
    return ModelDims.from_unet_config(components.unet.config)


def export_onnx(
    module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, directory: Path, device: str = "cpu"
) -> Path:
    """Export `module` (in the spec's dtypes, on `device`) to `directory`/model.onnx (plus
    model.onnx.data past 2 GB); returns the graph's path.

    Writes into a staging directory first: an interrupted export leaves the old files or none.
    """
    with replaced_directory(directory) as final, tempfile.TemporaryDirectory(dir=final.parent) as traced_dir:
        traced = Path(traced_dir)
        width, height = trace_size(dims)
        # Batch 2: a batch of 1 lets the tracer fold batch-sized broadcasts into constants.
        samples = {name: t.to(device) for name, t in spec.sample_inputs(batch=2, width=width, height=height).items()}
        with torch.no_grad(), warnings.catch_warnings():
            # diffusers branches on shapes in Python (TracerWarning); the legacy exporter says it is
            # legacy (DeprecationWarning). The first is why specs.ModelDims.size_multiple exists;
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
        _save_consolidated(traced / ONNX_FILE, final)
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


def check_onnx(path: Path, module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, batch: int = 1) -> NumericCheck:
    """Run the graph in ONNX Runtime on the CPU and torch on the same inputs; returns the difference."""
    width, height = check_size(dims)
    samples = spec.sample_inputs(batch=batch, width=width, height=height, seed=1)
    with torch.no_grad():
        expected = module(*(samples[name] for name in spec.input_names)).float().numpy()
    session = onnxruntime_session(path)
    actual = session.run(spec.output_names[:1], {name: t.numpy() for name, t in samples.items()})[0]
    return compare(actual, expected)


ONNX_TYPES = {torch.float32: "FLOAT", torch.float16: "FLOAT16", torch.bfloat16: "BFLOAT16"}


def check_graph_types(path: Path, spec: ComponentSpec) -> dict[str, int]:
    """Refuse a graph whose inputs and outputs are not in the spec's dtypes, or whose weights are not
    almost all in its main one (a strongly typed plan computes in exactly what the graph says; a few
    small fp32 constants, such as the timestep embedding's frequencies, are expected).

    Returns {weight type: bytes}.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    name_of = onnx.TensorProto.DataType.Name
    declared = {v.name: name_of(v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]}
    wanted = {t.name: ONNX_TYPES.get(t.dtype, str(t.dtype)) for t in spec.tensors()}
    problems = [f"{name} is {declared.get(name)}, not {want}" for name, want in wanted.items() if declared.get(name) != want]
    weight_bytes: Counter[str] = Counter()
    for weight in model.graph.initializer:
        count = 1
        for side in weight.dims:
            count *= side
        weight_bytes[name_of(weight.data_type)] += count * onnx.helper.tensor_dtype_to_np_dtype(weight.data_type).itemsize
    main = ONNX_TYPES[spec.inputs[0].dtype]
    floats = sum(weight_bytes[t] for t in ONNX_TYPES.values())
    if floats and weight_bytes[main] < 0.99 * floats:
        problems.append(f"only {weight_bytes[main] / floats:.1%} of the float weights are {main}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return dict(weight_bytes)
