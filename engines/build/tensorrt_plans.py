"""TensorRT plans from the exported ONNX graphs: one plan per component, one optimisation profile each."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from engines.backends.tensorrt_engine import import_tensorrt
from engines.core.files import write_atomically
from engines.core.specs import Shape

logger = logging.getLogger(__name__)

# Builder flags per precision (weakly typed network: the flags allow lower precision, TF32 is on by default).
PRECISION_FLAGS = {"fp32": (), "bf16": ("BF16",), "fp16": ("FP16",)}


class PlanBuildError(RuntimeError):
    """TensorRT could not parse a graph or build a plan."""


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    profile: Mapping[str, tuple[Shape, Shape, Shape]],
    precision: str,
    timing_cache: Path,
    optimization_level: int = 3,
) -> None:
    """Build one plan with one optimisation profile; the timing cache is read, extended and written back."""
    trt = import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, trt_logger)  # owns the weights: alive until the build returns
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PlanBuildError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    for flag in PRECISION_FLAGS[precision]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    optimization_profile = builder.create_optimization_profile()
    for name, (smallest, usual, largest) in profile.items():
        optimization_profile.set_shape(name, smallest, usual, largest)
    if config.add_optimization_profile(optimization_profile) < 0:
        raise PlanBuildError(f"TensorRT refused the optimisation profile {dict(profile)}")
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt, plan_path.name)  # held here: TensorRT does not own it
    config.progress_monitor = monitor

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PlanBuildError(f"TensorRT could not build {plan_path.name} from {onnx_path} (its log says why)")
    write_atomically(plan_path, memoryview(serialized))
    write_atomically(timing_cache, memoryview(config.get_timing_cache().serialize()))


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
