"""`python -m benchmarks.openvino_profile --engine-dir DIR`: where an OpenVINO component's time goes,
layer by layer, against this machine's matrix and memory ceilings.

OpenVINO's CPU plugin reports every executed layer's time and kernel (PERF_COUNT). Each layer falls
in one class: `matrix` (convolutions, fully connected, matmuls: their FLOPs over their time, against
the best OpenVINO matmul this process reaches at a few sizes), `fused` (the plugin's own subgraphs: attention and
element-wise chains, whose FLOPs it does not report), `memory` (norms, element-wise, reorders,
transposes, resizes, concats: their bytes in and out over their time, against the copy bandwidth
this process measures) and `other` (shape arithmetic). A matrix kernel's name says whether it ran on
AMX tiles (`amx` in it) or on vector units only, so "what leaves AMX idle" is a column, not a guess.

`--static` compiles the IR reshaped to the one size asked (every dimension known when compiling)
instead of the build's dynamic shapes, to measure what static shapes buy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks.peak import copy_bandwidth, gflops, openvino_matmul
from benchmarks.timing import measure
from engines.core.specs import UNET, VAE_DECODER

MATRIX = {"Convolution", "FullyConnected", "MatMul", "ScaledDotProductAttention", "GroupConvolution", "Deconvolution"}
OTHER = {"Parameter", "Result", "Constant", "ShapeOf", "Reshape", "Squeeze", "Unsqueeze", "Gather", "Range", "Broadcast"}
BYTES = {"f32": 4, "i32": 4, "i64": 8, "bf16": 2, "f16": 2, "u8": 1, "i8": 1}
PROBE_SIZES = (1024, 2048, 4096)  # the matmul probes: the best of them is the ceiling, as in the suite


@dataclass
class Layer:
    name: str
    kind: str  # the plugin's layer type
    kernel: str
    seconds: float
    flops: float | None  # matrix layers only
    bytes: float  # every input and output tensor, weights included

    @property
    def category(self) -> str:
        if self.kind in MATRIX:
            return "matrix (AMX)" if "amx" in self.kernel else "matrix (vector units)"
        if self.kind == "Subgraph":
            return "fused"
        if self.kind in OTHER:
            return "other"
        return "memory"


def shape(port: Any) -> list[int] | None:
    partial = port.get_partial_shape()
    return None if partial.is_dynamic else [d.get_length() for d in partial]


def matrix_flops(kind: str, inputs: list[list[int] | None], output: list[int] | None) -> float | None:
    """Multiply-adds x 2 from the runtime graph's shapes (None where a shape is not known)."""
    if output is None or any(s is None for s in inputs[:2]):
        return None
    out = math.prod(output)
    if kind in ("Convolution", "Deconvolution"):
        return 2.0 * out * math.prod(inputs[1][1:])
    if kind == "GroupConvolution":
        return 2.0 * out * math.prod(inputs[1][2:])
    if kind in ("FullyConnected", "MatMul"):
        return 2.0 * out * inputs[0][-1]
    if kind == "ScaledDotProductAttention":  # QK^T and its product with V
        query, key = inputs[0], inputs[1]
        return 4.0 * math.prod(query[:-1]) * key[-2] * query[-1]
    return None


def runtime_layers(compiled: Any, profiling: list[Any]) -> list[Layer]:
    """Join the per-layer times with the runtime graph's shapes and precisions."""
    ops = {op.get_friendly_name(): op for op in compiled.get_runtime_model().get_ordered_ops()}
    layers = []
    for info in profiling:
        if info.status.name != "EXECUTED" or info.node_name not in ops:
            continue
        op = ops[info.node_name]
        precision = op.get_rt_info()["outputPrecisions"].astype(str).split(",")[0]
        size = BYTES.get(precision.lower(), 4)
        inputs = [shape(port) for port in op.inputs()]
        outputs = [shape(port) for port in op.outputs()]
        known = [s for s in inputs + outputs if s is not None]
        layers.append(Layer(
            name=info.node_name, kind=info.node_type, kernel=info.exec_type, seconds=info.real_time.total_seconds(),
            flops=matrix_flops(info.node_type, inputs, outputs[0] if outputs else None) if info.node_type in MATRIX else None,
            bytes=float(sum(math.prod(s) * size for s in known)),
        ))
    return layers


def summarize(layers: list[Layer], peak_gflops: float, bandwidth_gbs: float) -> list[dict[str, Any]]:
    """Per category: time, share, and how close to its ceiling (FLOP/s for matrix, bytes/s for memory)."""
    total = sum(layer.seconds for layer in layers) or 1.0
    rows: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "flops": 0.0, "flops_seconds": 0.0, "bytes": 0.0, "layers": 0})
    for layer in layers:
        row = rows[layer.category]
        row["seconds"] += layer.seconds
        row["bytes"] += layer.bytes
        row["layers"] += 1
        if layer.flops:
            row["flops"] += layer.flops
            row["flops_seconds"] += layer.seconds
    summary = []
    for category, row in sorted(rows.items(), key=lambda item: -item[1]["seconds"]):
        achieved = row["flops"] / row["flops_seconds"] / 1e9 if row["flops_seconds"] else None
        memory_floor = row["bytes"] / (bandwidth_gbs * 1e9)
        summary.append({
            "category": category, "layers": int(row["layers"]), "ms": row["seconds"] * 1e3, "share": row["seconds"] / total,
            "gflops": achieved, "of_peak": achieved / peak_gflops if achieved else None,
            # The layer class's time if it moved its bytes at the measured copy bandwidth: its floor
            # where it does no arithmetic worth counting.
            "memory_floor_ms": memory_floor * 1e3, "of_memory_floor": memory_floor / row["seconds"] if row["seconds"] else None,
        })
    return summary


def by_kernel(layers: list[Layer]) -> list[dict[str, Any]]:
    """Time per (layer type, kernel), with the FLOP rate where the type's FLOPs are known."""
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for layer in layers:
        rows[(layer.kind, layer.kernel)][0] += layer.seconds
        rows[(layer.kind, layer.kernel)][1] += layer.flops or 0.0
    return [
        {"layer": kind, "kernel": kernel, "ms": seconds * 1e3, "gflops": flops / seconds / 1e9 if flops and seconds else None}
        for (kind, kernel), (seconds, flops) in sorted(rows.items(), key=lambda item: -item[1][0])
    ]


def profile(engine_dir: Path, component: str, precision: str, width: int, height: int, static: bool, repeats: int) -> dict[str, Any]:
    import openvino as ov

    from engines.core.hardware import usable_cpu_count
    from engines.manifest import Manifest

    manifest = Manifest.read(engine_dir)
    spec = manifest.dims.specs()[component]
    samples = spec.sample_inputs(batch=1, width=width, height=height)
    feed = {name: samples[name].numpy() for name in spec.input_names}
    core = ov.Core()
    model = core.read_model(str(engine_dir / manifest.artefact(engine_dir, component, "openvino").path))
    if static:
        model.reshape({name: list(array.shape) for name, array in feed.items()})
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": usable_cpu_count(), "PERF_COUNT": True}
    started = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    compile_s = time.perf_counter() - started
    del model
    request = compiled.create_infer_request()
    inputs = [feed[name] for name in spec.input_names]
    timing = measure(lambda: request.infer(inputs), warmup=1, repeats=repeats)
    layers = runtime_layers(compiled, request.profiling_info)  # the last run's
    del request, compiled
    peak = max(
        gflops(f"openvino@{size}", measure(openvino_matmul(precision.replace("f32", "fp32"), size), warmup=2, repeats=3).min)
        for size in PROBE_SIZES
    )
    bandwidth = copy_bandwidth()["bytes_per_second"] / 1e9
    return {
        "component": component, "precision": precision, "size": f"{width}x{height}", "static": static,
        "compile_s": compile_s, "seconds": timing.as_dict(), "layers_seconds": sum(layer.seconds for layer in layers),
        "peak_gflops": peak, "bandwidth_gbs": bandwidth,
        "categories": summarize(layers, peak, bandwidth), "kernels": by_kernel(layers),
        "slowest": [asdict(layer) | {"category": layer.category} for layer in sorted(layers, key=lambda l: -l.seconds)[:15]],
    }


def _number(value: float | None, form: str) -> str:
    return "–" if value is None else format(value, form)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"## {result['component']}, {result['precision']}, {result['size']}, {'static' if result['static'] else 'dynamic'} shapes",
        f"median {result['seconds']['median']:.3f} s per run (layers sum to {result['layers_seconds']:.3f} s), "
        f"compiled in {result['compile_s']:.1f} s; ceilings this process measured: OpenVINO matmul "
        f"{result['peak_gflops']:.0f} GFLOP/s, copy {result['bandwidth_gbs']:.1f} GB/s",
        "",
        "| class | layers | ms | share | GFLOP/s | of matmul peak | memory floor ms | of memory floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["categories"]:
        lines.append(
            f"| {row['category']} | {row['layers']} | {row['ms']:.1f} | {row['share']:.0%} | {_number(row['gflops'], '.0f')} | "
            f"{_number(row['of_peak'], '.0%')} | {row['memory_floor_ms']:.1f} | {_number(row['of_memory_floor'], '.0%')} |"
        )
    lines += ["", "| layer | kernel | ms | GFLOP/s |", "|---|---|---|---|"]
    lines += [f"| {row['layer']} | {row['kernel']} | {row['ms']:.1f} | {_number(row['gflops'], '.0f')} |" for row in result["kernels"][:15]]
    lines += ["", "| slowest layers | kernel | ms | GFLOP/s |", "|---|---|---|---|"]
    for layer in result["slowest"]:
        rate = layer["flops"] / layer["seconds"] / 1e9 if layer["flops"] and layer["seconds"] else None
        lines.append(f"| {layer['name'][-70:]} | {layer['kernel']} | {layer['seconds'] * 1e3:.1f} | {_number(rate, '.0f')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openvino_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--engine-dir", type=Path, required=True, help="a build_engines.py --target cpu output")
    parser.add_argument("--component", default=UNET, choices=(UNET, VAE_DECODER))
    parser.add_argument("--precision", default="bf16", choices=("f32", "bf16"), help="INFERENCE_PRECISION_HINT")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--static", action="store_true", help="compile for this one size (the IR reshaped)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the full result here")
    args = parser.parse_args(argv)
    result = profile(args.engine_dir, args.component, args.precision, args.width, args.height, args.static, args.repeats)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
