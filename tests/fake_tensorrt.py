"""A stand-in `tensorrt` module that models TensorRT 11's Python API, for the CPU tests.

It exposes exactly the names in tests/tensorrt_api.py (removed names such as BuilderFlag.FP16 are
absent, as in TensorRT 11) and behaves as the API documents where our code relies on it: the
network is strongly typed, so a "built plan" takes its tensor types from the ONNX graph it parsed
(read with the real `onnx` package); set_timing_cache, set_input_shape, set_tensor_address and
execute_async_v3 return booleans; tensor addresses must be 256-byte aligned. Objects refuse
attributes the real ones do not have (__slots__), so a property TensorRT removed cannot be set
silently either.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

from tests.tensorrt_api import MODULE

VERSION = "11.4.0.106"
# ONNX element type names -> TensorRT DataType names; the inspector's way of writing each.
ONNX_TO_TRT = {"FLOAT": "FLOAT", "FLOAT16": "HALF", "BFLOAT16": "BF16", "INT64": "INT64", "INT32": "INT32", "BOOL": "BOOL"}
FORMATS = {"FLOAT": "Row major linear FP32", "HALF": "Channel major FP16 format where channel % 8 == 0", "BF16": "Row major linear BF16"}


def _enum(name: str) -> types.SimpleNamespace:
    """An enum whose members know their `.name`, as pybind11 enums do."""
    return types.SimpleNamespace(**{member: types.SimpleNamespace(name=member) for member in MODULE[name]})


class Options:
    """How the stand-in misbehaves, set by a test: a graph it cannot parse, a build that fails..."""

    def __init__(self) -> None:
        self.parses = True
        self.builds = True
        self.accepts_timing_cache = True
        self.raises_in_build: Exception | None = None
        self.calls: dict[str, Any] = {"flags": [], "networks": [], "shapes": {}, "cache_in": []}


def make_module(options: Options | None = None) -> types.ModuleType:
    options = options or Options()
    calls = options.calls
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    for name in ("BuilderFlag", "NetworkDefinitionCreationFlag", "ProfilingVerbosity", "LayerInformationFormat",
                 "ExecutionContextAllocationStrategy", "DataType", "TensorIOMode"):
        setattr(trt, name, _enum(name))
    for index, member in enumerate(sorted(MODULE["NetworkDefinitionCreationFlag"])):
        setattr(trt.NetworkDefinitionCreationFlag, member, index)  # int() of a flag is its bit position

    class Logger:
        __slots__ = ()
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity: int = 2) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Network:
        __slots__ = ("flags", "io")

        def __init__(self, flags: int) -> None:
            self.flags, self.io = flags, {}

    class OnnxParser:
        __slots__ = ("network",)

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        @property
        def num_errors(self) -> int:
            return 0 if options.parses else 2

        def parse_from_file(self, path: str) -> bool:
            import onnx

            calls["parsed"] = path
            if not options.parses:
                return False
            graph = onnx.load(path, load_external_data=False).graph
            name_of = onnx.TensorProto.DataType.Name
            for value, mode in [*((v, "INPUT") for v in graph.input), *((v, "OUTPUT") for v in graph.output)]:
                self.network.io[value.name] = (ONNX_TO_TRT[name_of(value.type.tensor_type.elem_type)], mode)
            return True

        def get_error(self, index: int) -> str:
            return f"In node {index}: unsupported\n operator"

    class TimingCache:
        __slots__ = ("data",)

        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class Profile:
        __slots__ = ()

        def set_shape(self, name: str, smallest: Any, usual: Any, largest: Any) -> None:
            calls["shapes"][name] = (tuple(smallest), tuple(usual), tuple(largest))

    class Config:
        __slots__ = ("builder_optimization_level", "profiling_verbosity", "progress_monitor", "flags", "cache")

        def __init__(self) -> None:
            self.builder_optimization_level, self.profiling_verbosity, self.progress_monitor = 3, None, None
            self.flags, self.cache = [], None

        def set_flag(self, flag: Any) -> None:
            self.flags.append(flag.name)
            calls["flags"].append(flag.name)

        def add_optimization_profile(self, profile: Profile) -> int:
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls["cache_in"].append(bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return options.accepts_timing_cache

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        __slots__ = ()

        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            network = Network(int(flags))
            calls["networks"].append(network)
            return network

        def create_builder_config(self) -> Config:
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            if options.raises_in_build is not None:
                raise options.raises_in_build
            if not options.builds:
                return None
            plan = {"io": network.io, "tf32": "TF32" in config.flags, "detailed": config.profiling_verbosity is not None}
            return json.dumps(plan).encode()

    class Inspector:
        __slots__ = ("plan",)

        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan = plan

        def get_engine_information(self, format: Any) -> str:
            first_input = next(dtype for dtype, mode in self.plan["io"].values() if mode == "INPUT")
            layer = {"Name": "conv", "Outputs": [{"Name": "out", "Format/Datatype": FORMATS[first_input]}]}
            return json.dumps({"Layers": [layer, layer, "a layer named only"] if self.plan["detailed"] else []})

    class Engine:
        __slots__ = ("plan", "names")

        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan, self.names = plan, list(plan["io"])

        num_io_tensors = property(lambda self: len(self.names))
        device_memory_size_v2 = property(lambda self: 4096)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(trt.DataType, self.plan["io"][name][0])

        def get_tensor_mode(self, name: str) -> Any:
            return getattr(trt.TensorIOMode, self.plan["io"][name][1])

        def create_engine_inspector(self) -> Inspector:
            return Inspector(self.plan)

    class Runtime:
        __slots__ = ()

        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: Any) -> Engine | None:
            try:
                return Engine(json.loads(bytes(data)))
            except ValueError:
                return None

    trt.Logger, trt.IProgressMonitor, trt.OnnxParser, trt.Builder, trt.Runtime = Logger, IProgressMonitor, OnnxParser, Builder, Runtime
    trt.options = options  # for the tests; not part of TensorRT (test_tensorrt_api skips it)
    return trt


def plan_path_io(plan: Path) -> dict[str, Any]:
    """What the stand-in wrote into a plan file: {tensor: (DataType name, mode)}."""
    return {name: tuple(value) for name, value in json.loads(plan.read_bytes())["io"].items()}
