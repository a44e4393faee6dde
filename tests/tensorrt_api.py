"""The TensorRT 11 Python API as far as this project uses it: every name, and where it was checked.

Checked against NVIDIA's Python bindings source for TensorRT 11.1 (github.com/NVIDIA/TensorRT,
python/src/infer/pyCore.cpp, pyFoundationalTypes.cpp, python/src/parsers/pyOnnx.cpp, tag v11.1)
and the "Migrating from TensorRT 10.x to 11.x" Python API reference
(docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html).
None of the names below is on the 11.x removal lists up to 11.4.

tests/test_tensorrt_api.py reads our TensorRT code and fails when it touches a name that is not
here or that TensorRT removed; tests/fake_tensorrt.py, the stand-in the CPU tests run against,
exposes exactly these names, so a removed name fails there too.
"""

from __future__ import annotations

# Module-level names -> the members our code (or the stand-in) reads of each.
MODULE: dict[str, frozenset[str]] = {
    "__version__": frozenset(),
    "Logger": frozenset({"INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"}),
    "Builder": frozenset(),
    "OnnxParser": frozenset(),
    "Runtime": frozenset(),
    "IProgressMonitor": frozenset(),
    # pyCore.cpp py::enum_<BuilderFlag>, 11.1: FP16, BF16, INT8, FP8, INT4, FP4 and the precision
    # constraints are gone; TF32 stays ("enabled by default").
    "BuilderFlag": frozenset(
        {"DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
         "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE",
         "STRIP_PLAN", "REFIT_IDENTICAL"}
    ),
    # Deprecated and ignored in 11 (strong typing is always on); needed on 10.12 to 10.x.
    "NetworkDefinitionCreationFlag": frozenset({"STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"}),
    "ProfilingVerbosity": frozenset({"LAYER_NAMES_ONLY", "NONE", "DETAILED"}),
    "LayerInformationFormat": frozenset({"ONELINE", "JSON"}),
    "ExecutionContextAllocationStrategy": frozenset({"STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"}),
    "DataType": frozenset({"FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8", "INT4", "FP4", "E8M0"}),
    "TensorIOMode": frozenset({"NONE", "INPUT", "OUTPUT"}),
}

# TensorRT classes -> the methods and properties our code uses of each (all present in 11.1).
# set_timing_cache, set_input_shape, set_tensor_address and execute_async_v3 return a bool.
CLASSES: dict[str, frozenset[str]] = {
    "Builder": frozenset({"create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network"}),
    "INetworkDefinition": frozenset(),
    "OnnxParser": frozenset({"parse_from_file", "num_errors", "get_error"}),
    "IBuilderConfig": frozenset(
        {"builder_optimization_level", "profiling_verbosity", "progress_monitor", "set_flag", "clear_flag", "get_flag", "add_optimization_profile",
         "create_timing_cache", "set_timing_cache", "get_timing_cache"}
    ),
    "IOptimizationProfile": frozenset({"set_shape"}),
    "ITimingCache": frozenset({"serialize"}),
    "Runtime": frozenset({"deserialize_cuda_engine"}),
    "ICudaEngine": frozenset(
        {"num_io_tensors", "get_tensor_name", "get_tensor_dtype", "get_tensor_mode", "device_memory_size_v2",
         "create_execution_context", "create_engine_inspector"}
    ),
    "EngineInspector": frozenset({"get_engine_information"}),
    "IExecutionContext": frozenset(
        {"set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3", "set_device_memory"}
    ),
}

# Our code's variable names for TensorRT objects -> their class (test_tensorrt_api reads calls by these names).
VARIABLES: dict[str, str] = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "optimization_profile": "IOptimizationProfile",
    "cache": "ITimingCache",
    "runtime": "Runtime",
    "_runtime": "Runtime",
    "engine": "ICudaEngine",
    "inspector": "EngineInspector",
    "context": "IExecutionContext",
}

# Removed in TensorRT 10 or 11 (the migration guides' lists): any use of these names is a bug.
REMOVED: frozenset[str] = frozenset(
    {
        # 11: weak typing is gone
        "FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
        "platform_has_fast_fp16", "platform_has_fast_int8", "int8_calibrator", "set_calibration_profile",
        "get_calibration_profile", "set_quantization_flag", "get_quantization_flag", "quantization_flags",
        "clear_quantization_flag", "algorithm_selector",
        # 11: the size queries without _v2
        "device_memory_size", "device_memory_size_for_profile",
        # 10: implicit batch and bindings
        "EXPLICIT_BATCH", "max_workspace_size", "build_engine", "execute_async_v2", "execute_v2", "num_bindings",
        "get_binding_index", "get_binding_dtype", "get_binding_shape", "set_binding_shape", "binding_is_input",
        "create_execution_context_without_device_memory",
    }
)
