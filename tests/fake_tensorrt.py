"""A stand-in `tensorrt` module that models TensorRT 11's observable behaviour, for the CPU tests.

It exposes exactly the names in tests/tensorrt_api.py (removed names such as BuilderFlag.FP16 are
absent, as in TensorRT 11), and each rule it enforces cites the NVIDIA source it follows (TensorRT
11.1's Python bindings, python/src/infer/pyCore.cpp and python/docstrings/infer/pyCoreDoc.h; its
C++ header include/NvInferRuntime.h; the 10.x -> 11.x migration guide), never our code. The
network is strongly typed, so a plan takes its tensor types from the ONNX graph it parsed, and an
execution context runs that very graph (with ONNX Runtime) on the memory bound to it, so a wrong
dtype, shape or address gives a wrong answer or a refusal, as on a GPU. "Device" memory here is
CPU memory: addresses are read and written with ctypes. Objects refuse attributes the real ones do
not have (__slots__), so a property TensorRT removed cannot be set silently either.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

from tests.tensorrt_api import MODULE

VERSION = "11.4.0.106"
ALIGNMENT = 256  # NvInferRuntime.h setTensorAddress: "The pointer must have at least 256-byte alignment."
DEVICE_MEMORY = 4096  # what every stand-in engine reports as device_memory_size_v2
# ONNX element type names -> TensorRT DataType names.
ONNX_TO_TRT = {"FLOAT": "FLOAT", "FLOAT16": "HALF", "BFLOAT16": "BF16", "INT64": "INT64", "INT32": "INT32", "BOOL": "BOOL"}
# The 11.x inspector writes a layer tensor's type under "Datatype" and its layout under "Format"
# (migration guide 10.x -> 11.x, "IEngineInspector JSON Output", whose example reads "Float").
INSPECTOR_NAMES = {"FLOAT": "Float", "HALF": "Half", "BF16": "BFloat16", "INT32": "Int32", "INT64": "Int64", "BOOL": "Bool"}
FORMATS = {"FLOAT": "Row major linear FP32 format (kLINEAR)", "HALF": "Channel major FP16 format where channel % 8 == 0",
           "BF16": "Row major linear BF16 format (kLINEAR)"}
NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


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
        self.calls: dict[str, Any] = {"flags": [], "networks": [], "shapes": {}, "cache_in": [], "contexts": []}
        self.errors: list[str] = []  # what TensorRT's logger would print: refusals that return nothing


def make_module(options: Options | None = None) -> types.ModuleType:
    options = options or Options()
    calls = options.calls
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch._dynamo's find_spec probes it
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
        __slots__ = ("flags", "io", "onnx_path")

        def __init__(self, flags: int) -> None:
            self.flags, self.io, self.onnx_path = flags, {}, None

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
            model = onnx.load(path, load_external_data=False)
            # pyOnnxDoc.h: the path is "Only required if the model has externally stored weights":
            # the parser reads them from beside the model, and a missing file fails the parse.
            missing = _missing_external_data(model, Path(path).parent)
            if missing:
                options.errors.append(f"Failed to open external data file {missing}")
                return False
            self.network.onnx_path = path
            graph = model.graph
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
        __slots__ = ("shapes",)

        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, smallest: Any, usual: Any, largest: Any) -> None:
            # pyCoreDoc.h IOptimizationProfile.set_shape: equal ranks and 0 <= min[i] <= opt[i] <= max[i];
            # pyCore.cpp raises RuntimeError ("Shape provided for opt is inconsistent with other shapes.").
            corners = (tuple(smallest), tuple(usual), tuple(largest))
            if len({len(c) for c in corners}) != 1 or not all(0 <= a <= b <= c for a, b, c in zip(*corners)):
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            self.shapes[name] = corners
            calls["shapes"][name] = corners

    class Config:
        __slots__ = ("builder_optimization_level", "profiling_verbosity", "progress_monitor", "flags", "cache")

        def __init__(self) -> None:
            self.builder_optimization_level, self.profiling_verbosity, self.progress_monitor = 3, None, None
            # pyCoreDoc.h BuilderFlag.TF32: "Enabled by default."
            self.flags, self.cache = {"TF32"}, None

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag.name)
            calls["flags"].append(flag.name)

        def clear_flag(self, flag: Any) -> None:
            self.flags.discard(flag.name)
            calls["flags"].append(f"-{flag.name}")

        def get_flag(self, flag: Any) -> bool:
            return flag.name in self.flags

        def add_optimization_profile(self, profile: Profile) -> int:
            calls["profile"] = profile
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
            plan = {
                "io": network.io,
                "onnx": network.onnx_path,
                "profile": calls["profile"].shapes,
                "tf32": "TF32" in config.flags,
                "detailed": config.profiling_verbosity is trt.ProfilingVerbosity.DETAILED,
            }
            return json.dumps(plan).encode()

    class Inspector:
        __slots__ = ("plan",)

        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan = plan

        def get_engine_information(self, format: Any) -> str:
            """The 11.x schema: layers with "Datatype" and "Format" per tensor; names only below DETAILED."""
            first_input = next(dtype for dtype, mode in self.plan["io"].values() if mode == "INPUT")
            output = {"Name": "out", "Dimensions": [1, 4, 8, 8], "Datatype": INSPECTOR_NAMES[first_input],
                      "Format": FORMATS[first_input]}
            layer = {"Name": "conv", "LayerType": "CaskConvolution", "Outputs": [output]}
            if not self.plan["detailed"]:
                return json.dumps({"Layers": ["conv", "conv"]})
            return json.dumps({"Layers": [layer, layer, "a layer named only"]})

    class Engine:
        __slots__ = ("plan", "names")

        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan, self.names = plan, list(plan["io"])

        num_io_tensors = property(lambda self: len(self.names))
        device_memory_size_v2 = property(lambda self: DEVICE_MEMORY)

        def create_execution_context(self, strategy: Any = None) -> Context:
            context = Context(self, strategy or trt.ExecutionContextAllocationStrategy.STATIC)
            calls["contexts"].append(context)
            return context

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(trt.DataType, self.plan["io"][name][0])

        def get_tensor_mode(self, name: str) -> Any:
            return getattr(trt.TensorIOMode, self.plan["io"][name][1])

        def create_engine_inspector(self) -> Inspector:
            return Inspector(self.plan)

    class Context:
        """IExecutionContext: runs the plan's graph on the memory bound to it, when TensorRT would."""

        __slots__ = ("engine", "strategy", "memory", "shapes", "addresses", "launches", "_session")

        def __init__(self, engine: Engine, strategy: Any) -> None:
            self.engine, self.strategy, self.memory = engine, strategy, None
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.launches: list[int] = []
            self._session: Any = None

        def set_device_memory(self, memory: int, size: int) -> None:
            # pyCoreDoc.h set_device_memory: "256-byte aligned device memory", its size "at least as large as
            # CudaEngine.get_device_memory_size_v2". setDeviceMemoryV2 returns nothing: TensorRT logs the error
            # and the next enqueue fails.
            if memory % ALIGNMENT or size < self.engine.device_memory_size_v2:
                options.errors.append(f"setDeviceMemoryV2: {memory:#x} ({size} bytes) is misaligned or too small")
                return
            self.memory = (memory, size)

        def set_input_shape(self, name: str, shape: Any) -> bool:
            # NvInferRuntime.h setInputShape: false if the name is not an input; a shape outside the
            # optimisation profile's [min, max] is refused the same way.
            if self.engine.plan["io"].get(name, (None, None))[1] != "INPUT":
                return False
            smallest, _, largest = self.engine.plan["profile"][name]
            shape = tuple(int(side) for side in shape)
            if len(shape) != len(smallest) or not all(a <= s <= b for a, s, b in zip(smallest, shape, largest)):
                options.errors.append(f"setInputShape: {name} {shape} is outside [{smallest}, {largest}]")
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            """An output's shape follows from the input shapes set (the graph is run on zeros to find it)."""
            if name in self.shapes:
                return self.shapes[name]
            inputs = {n: np.zeros(self.shapes[n], NUMPY[dtype]) for n, (dtype, mode) in self.engine.plan["io"].items()
                      if mode == "INPUT"}
            return tuple(self._run(inputs)[name].shape)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            # pyCore.cpp set_tensor_address takes a size_t: anything but an int is a TypeError there.
            if not isinstance(memory, int):
                raise TypeError(f"set_tensor_address(): incompatible function arguments: memory={memory!r}")
            if name not in self.engine.plan["io"] or memory % ALIGNMENT or memory == 0:
                return False
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            # pyCore.cpp execute_async_v3(size_t streamHandle): a torch.cuda.Stream object is a TypeError;
            # its integer handle (stream.cuda_stream) is what TensorRT takes.
            if not isinstance(stream_handle, int) or isinstance(stream_handle, bool):
                raise TypeError(f"execute_async_v3(): incompatible function arguments: stream_handle={stream_handle!r}")
            io = self.engine.plan["io"]
            # NvInferRuntime.h setTensorAddress: "Before calling enqueueV3(), each input must have a non-null
            # address and each output must have a non-null address"; every input needs its shape.
            unbound = [n for n in io if n not in self.addresses] + [n for n, (_, m) in io.items() if m == "INPUT" and n not in self.shapes]
            # USER_MANAGED contexts have no memory until set_device_memory gives them some.
            needs_memory = self.strategy is trt.ExecutionContextAllocationStrategy.USER_MANAGED and self.memory is None
            if unbound or needs_memory:
                options.errors.append(f"enqueueV3: unbound {unbound}" if unbound else "enqueueV3: no device memory")
                return False
            self.launches.append(stream_handle)
            inputs = {n: self._read(n, dtype, self.shapes[n]) for n, (dtype, mode) in io.items() if mode == "INPUT"}
            for name, value in self._run(inputs).items():
                self._read(name, io[name][0], value.shape)[...] = value
            return True

        def _read(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
            count = int(np.prod(shape))
            element = np.dtype(NUMPY[dtype])
            buffer = (ctypes.c_byte * (count * element.itemsize)).from_address(self.addresses[name])
            return np.frombuffer(buffer, dtype=element).reshape(shape)

        def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self._session is None:
                import onnxruntime

                self._session = onnxruntime.InferenceSession(self.engine.plan["onnx"], providers=["CPUExecutionProvider"])
            names = [o.name for o in self._session.get_outputs()]
            return dict(zip(names, self._session.run(names, inputs)))

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


def _missing_external_data(model: Any, directory: Path) -> str | None:
    """The first external data file a graph names that is not in `directory`, else None."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor) and not (directory / ExternalDataInfo(tensor).location).is_file():
            return str(directory / ExternalDataInfo(tensor).location)
    return None


def plan_path_io(plan: Path) -> dict[str, Any]:
    """What the stand-in wrote into a plan file: {tensor: (DataType name, mode)}."""
    return {name: tuple(value) for name, value in json.loads(plan.read_bytes())["io"].items()}
