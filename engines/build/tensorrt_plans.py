"""TensorRT plans from ONNX graphs: strongly typed, one optimisation profile each, precision read back.

Strongly typed, as NVIDIA's own SDXL demo (demo/Diffusion) builds them and as TensorRT 11 only
builds: the precision lives in the graph TensorRT parses (an fp16 UNet graph exported from an fp16
module; the VAE's fp32 graph with TF32 allowed), not in builder flags (TensorRT 11 removed
BuilderFlag.FP16/BF16). What the plan really computes in is read back from the built engine (its
I/O tensor types, and the layer output types its inspector reports) and goes into the manifest.

Every TensorRT name used here is listed, with where it was checked, in tests/tensorrt_api.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from engines.backends.tensorrt_engine import import_tensorrt
from engines.core.files import write_atomically
from engines.core.specs import Shape

logger = logging.getLogger(__name__)

MIN_VERSION = (10, 12)  # the first TensorRT whose strongly typed networks take bf16 and fp16 graphs as they are
# TensorRT DataType names -> the precision they stand for.
PRECISION_OF = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16"}
# How the engine inspector's JSON names a type -> the DataType name, matched on whole words, case
# folded. TensorRT 11 writes a layer tensor's type alone under "Datatype" and its layout under
# "Format" (migration guide 10.x -> 11.x, "IEngineInspector JSON Output": "Float"); 10.x wrote both
# in one "Format/Datatype" string ("Row major linear FP32", "Channel major FP16 format ...", or a
# bare "Float"). The spellings are those NVIDIA's own readers of that JSON accept (Polygraphy's
# backend/trt/util.py for 10.x; the trt-perf-analysis report's "Datatype" table for 11.x).
INSPECTOR_TYPES = {
    **dict.fromkeys(("float", "float32", "fp32"), "FLOAT"),
    **dict.fromkeys(("half", "float16", "fp16"), "HALF"),
    **dict.fromkeys(("bfloat16", "bf16"), "BF16"),
    **dict.fromkeys(("fp8", "float8"), "FP8"),
    **dict.fromkeys(("bool", "boolean"), "BOOL"),
    **{name.lower(): name for name in ("INT8", "INT32", "INT64", "UINT8", "INT4", "FP4", "E8M0")},
}
INSPECTOR_TYPE_KEYS = ("Datatype", "Format/Datatype")  # 11.x first, 10.x as the fallback


class PlanBuildError(RuntimeError):
    """TensorRT could not parse a graph or build a plan; the message is one line."""


@dataclass(frozen=True)
class PlanFacts:
    """What a built plan computes in, read back from the engine TensorRT made."""

    io_dtypes: dict[str, str]  # tensor -> TensorRT DataType name
    layer_dtypes: dict[str, int] = field(default_factory=dict)  # DataType name -> layer outputs of it (inspector)
    tf32: bool = False

    def precision(self, first_input: str) -> str:
        """fp16 / bf16 / fp32, from the first input's type; fp32 with TF32 allowed is 'tf32'."""
        precision = PRECISION_OF.get(self.io_dtypes[first_input], self.io_dtypes[first_input].lower())
        return "tf32" if precision == "fp32" and self.tf32 else precision

    def to_json(self) -> dict[str, Any]:
        return {"io_dtypes": self.io_dtypes, "layer_dtypes": self.layer_dtypes, "tf32": self.tf32}


def version_tuple(version: str) -> tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int(minor)


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    profile: Mapping[str, tuple[Shape, Shape, Shape]],
    timing_cache: Path,
    optimization_level: int = 3,
    tf32: bool = False,
) -> PlanFacts:
    """Build one strongly typed plan; the timing cache is read, extended and written back.

    Raises PlanBuildError (one line) for anything TensorRT refuses or raises.
    """
    trt = import_tensorrt()
    try:
        return _build(trt, onnx_path, plan_path, profile, timing_cache, optimization_level, tf32)
    except PlanBuildError:
        raise
    except Exception as exc:  # TensorRT's bindings raise TypeError, RuntimeError, AttributeError...
        detail = " ".join(str(exc).split())
        raise PlanBuildError(f"TensorRT failed building {plan_path.name}: {exc.__class__.__name__}: {detail}") from exc


def _network_flags(trt: Any) -> int:
    """TensorRT 11 builds strongly typed networks only (the flag is deprecated and ignored there);
    10.12 to 10.x need the creation flag."""
    version = version_tuple(trt.__version__)
    if version < MIN_VERSION:
        raise PlanBuildError(
            f"TensorRT {trt.__version__} is older than {'.'.join(map(str, MIN_VERSION))}, "
            "which strongly typed plans need; install the version in constraints/gpu.txt"
        )
    if version[0] >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _build(
    trt: Any,
    onnx_path: Path,
    plan_path: Path,
    profile: Mapping[str, tuple[Shape, Shape, Shape]],
    timing_cache: Path,
    optimization_level: int,
    tf32: bool,
) -> PlanFacts:
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)  # owns the weights: alive until the build returns
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        errors = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise PlanBuildError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # so the inspector can report layer types
    # TF32 is on in a new config ("Enabled by default", pyCoreDoc.h BuilderFlag.TF32): an fp32 plan
    # computes in fp32 only if the flag is cleared. Asked for, it gives fp32 graphs (the VAE) TF32
    # tensor cores with fp32 range. The plan is named by the flag the config holds when it builds.
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    optimization_profile = builder.create_optimization_profile()
    for name, (smallest, usual, largest) in profile.items():
        optimization_profile.set_shape(name, smallest, usual, largest)
    if config.add_optimization_profile(optimization_profile) < 0:
        raise PlanBuildError(f"TensorRT refused the optimisation profile {dict(profile)}")
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise PlanBuildError(f"TensorRT refused the timing cache {timing_cache} (delete it to start a new one)")
    monitor = _progress_monitor(trt, plan_path.name)  # held here: TensorRT does not own it
    config.progress_monitor = monitor

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PlanBuildError(f"TensorRT could not build {plan_path.name} from {onnx_path} (its log says why)")
    facts = read_back(trt, serialized, config.get_flag(trt.BuilderFlag.TF32))
    write_atomically(plan_path, memoryview(serialized))
    write_atomically(timing_cache, memoryview(config.get_timing_cache().serialize()))
    return facts


def read_back(trt: Any, serialized: Any, tf32: bool) -> PlanFacts:
    """The I/O types and the layer output types of the engine TensorRT built, not what we asked for."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise PlanBuildError("TensorRT could not read back the plan it just built")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    io_dtypes = {name: engine.get_tensor_dtype(name).name for name in names}
    inspector = engine.create_engine_inspector()
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)).get("Layers", [])
    return PlanFacts(io_dtypes, dict(Counter(_layer_output_types(layers))), tf32)


def _layer_output_types(layers: list[Any]) -> Iterator[str]:
    """Each layer output's DataType name, from the inspector's detailed JSON (see INSPECTOR_TYPES)."""
    for layer in layers:
        if not isinstance(layer, dict):
            continue  # a layer reported by name only
        for output in layer.get("Outputs", []):
            if isinstance(output, dict):
                described = next((output[key] for key in INSPECTOR_TYPE_KEYS if key in output), "")
                found = inspector_type(str(described))
                if found is not None:
                    yield found


def inspector_type(described: str) -> str | None:
    """The DataType name in an inspector type string ("Half", "BFloat16", "Row major linear FP32"), or None ("N/A")."""
    words = re.findall(r"[a-z0-9]+", described.lower())
    return next((INSPECTOR_TYPES[word] for word in words if word in INSPECTOR_TYPES), None)


def _progress_monitor(trt: Any, label: str) -> Any:
    """Log the builder's top-level phases: a UNet build takes minutes, and silence looks like a hang."""

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                logger.info("%s: %s (%d steps)", label, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Progress()
