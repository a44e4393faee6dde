"""TensorRT at run time: the built plans as the loop's UNet and VAE runners (the encoder where built) (engines/build builds them).

Written against the TensorRT 11 Python API (and 10.12 or later); every name used is listed, with
where it was checked, in tests/tensorrt_api.py. `tensorrt` is imported only when a plan is built or
loaded, so this module imports, and its selection logic is tested, on machines without it. The life
cycle, as in NVIDIA's demo/Diffusion: deserialize each plan (after checking its SHA-256 against the
manifest), create one execution context per engine on one shared block of device memory (the UNet
and the VAE never run at the same time), bind 256-byte aligned torch CUDA tensors by name, and run
with `execute_async_v3` on one non-default CUDA stream. Every refusal from TensorRT is an EngineError.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from engines.backends.torch_runners import load_text_side
from engines.base import EngineError, EngineUnavailable, GenerationRequest
from engines.core.engine import PipelineEngine
from engines.core.files import bytes_sha256
from engines.core.numerics import choose_numerics, tensorrt_name
from engines.core.pipeline import SDXLTurboPipeline
from engines.core.specs import COMPILED_COMPONENTS, UNET, VAE_DECODER, VAE_ENCODER, ComponentSpec
from engines.manifest import Manifest

logger = logging.getLogger(__name__)

# TensorRT DataType member names -> torch dtypes (by name: no tensorrt import needed to build it).
TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}
INSTALL_HINT = "on a GPU machine, `make serve` installs it (constraints/gpu.txt)"
ALIGNMENT = 256  # bytes: TensorRT requires it of every tensor address (IExecutionContext::setTensorAddress)


def tensorrt_version() -> str | None:
    """The importable TensorRT's version, or None (not installed, or its libraries do not load)."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return str(tensorrt.__version__)


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise EngineUnavailable(f"TensorRT cannot be imported ({exc}); {INSTALL_HINT}") from exc
    return tensorrt


# --- running ----------------------------------------------------------------------------------------


def aligned_empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous tensor whose address is a multiple of ALIGNMENT."""
    count = 1
    for side in shape:
        count *= int(side)
    element = torch.empty((), dtype=dtype).element_size()
    storage = torch.empty(count + ALIGNMENT // element, dtype=dtype, device=device)
    offset = (-storage.data_ptr() % ALIGNMENT) // element
    return storage[offset : offset + count].view(tuple(shape))


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` if TensorRT may bind it as it is, else an aligned contiguous copy.

    A view into a larger tensor (the loop's timestep is `scheduler.timesteps[i]`, expanded) can start
    a few bytes into its storage; TensorRT needs 256-byte aligned addresses.
    """
    if tensor.is_contiguous() and tensor.data_ptr() % ALIGNMENT == 0:
        return tensor
    copy = aligned_empty(tensor.shape, tensor.dtype, tensor.device)
    copy.copy_(tensor)
    return copy


class SharedBlock:
    """One block of device memory that every execution context of a LoadedPlans works in.

    Safe only while the engines run one at a time, in order, on one stream: TensorRT forbids "using
    the same memory for a parallel execution context" while an enqueue is in flight (pyCoreDoc.h,
    IExecutionContext.set_device_memory). The service guarantees it (the admission queue's single
    engine thread, one CUDA stream per engine); this guard makes any other caller an error, never
    silently corrupt memory: a second call while one runs, or a call on another stream (whose work
    could overlap the first stream's still queued kernels).
    """

    def __init__(self, size: int, device: torch.device) -> None:
        self.size = size
        self.memory = aligned_empty((max(size, 1),), torch.uint8, device)
        self._running = threading.Lock()
        self._stream: int | None = None

    @contextlib.contextmanager
    def use(self, stream: int) -> Iterator[None]:
        if not self._running.acquire(blocking=False):
            raise EngineError("TensorRT engines share one device memory block: a second call came while one runs")
        try:
            if self._stream is None:
                self._stream = stream
            elif stream != self._stream:
                raise EngineError(
                    f"TensorRT engines share one device memory block: called on stream {stream:#x}, "
                    f"the block is in use on stream {self._stream:#x}"
                )
            yield
        finally:
            self._running.release()


@dataclass
class PersistentIO:
    """The I/O tensors of one set of input shapes, bound once and reused (and, on CUDA, its graph)."""

    shapes: tuple[tuple[int, ...], ...]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor] = field(default_factory=list)
    graph: Any = None  # torch.cuda.CUDAGraph of one enqueue on these addresses


class TensorRTRunner:
    """One engine as a loop runner: float32 torch CUDA tensors in and out, cast to the engine's types inside.

    With `cuda_graphs`, each set of input shapes gets persistent I/O tensors, bound once; inputs are
    copied in, the output is copied out (the next call overwrites the buffer), and on CUDA the enqueue
    is captured in a CUDA graph after its first plain run and replayed from then on (a graph replays
    the shapes and addresses it was captured with, hence one graph per set of shapes).
    """

    def __init__(
        self,
        engine: Any,
        context: Any,
        spec: ComponentSpec,
        device: torch.device | str = "cuda",
        stream_handle: Callable[[], int] = lambda: torch.cuda.current_stream().cuda_stream,
        block: SharedBlock | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        self.engine, self.context, self.spec = engine, context, spec
        self.device, self.stream_handle, self.block = torch.device(device), stream_handle, block
        self.dtypes = {name: TORCH_DTYPES[engine.get_tensor_dtype(name).name] for name in spec.input_names + spec.output_names}
        self.persistent: dict[tuple[tuple[int, ...], ...], PersistentIO] | None = {} if cuda_graphs else None
        self._bound_shapes: tuple[tuple[int, ...], ...] | None = None  # what the context holds now (persistent mode)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.spec.inputs):
            raise TypeError(f"{self.spec.name} takes {len(self.spec.inputs)} tensors, got {len(inputs)}")
        # Torch's current stream (its integer handle): tensors freed after the call are reused only by work queued after it.
        stream = self.stream_handle()
        with self.block.use(stream) if self.block is not None else contextlib.nullcontext():
            return self._run(stream, inputs) if self.persistent is None else self._run_persistent(stream, inputs)

    def _run(self, stream: int, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        # held until the engine is queued: a freed block would be reused by the next copy
        bound = [aligned(tensor.to(self.device, self.dtypes[name])) for name, tensor in zip(self.spec.input_names, inputs)]
        outputs = self._bind_all(bound)
        self._execute(stream)
        return outputs[0].float()

    def _run_persistent(self, stream: int, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        shapes = tuple(tuple(tensor.shape) for tensor in inputs)
        io = self.persistent.get(shapes)  # type: ignore[union-attr]
        if io is None:
            io = PersistentIO(shapes, [aligned_empty(s, self.dtypes[n], self.device) for n, s in zip(self.spec.input_names, shapes)])
            self.persistent[shapes] = io  # type: ignore[index]
        for buffer, tensor in zip(io.inputs, inputs):
            buffer.copy_(tensor)  # casts to the engine's type
        if io.graph is not None:
            io.graph.replay()
        else:
            if self._bound_shapes != shapes:  # the context holds one set of shapes and addresses at a time
                io.outputs = self._bind_all(io.inputs, io.outputs)
                self._bound_shapes = shapes
            self._execute(stream)
            if self.device.type == "cuda":
                io.graph = self._capture()
        return io.outputs[0].to(torch.float32, copy=True)  # the buffer is the next call's

    def _bind_all(self, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
        """Set the input shapes and every address; the outputs are made to the shapes TensorRT infers unless given."""
        for name, value in zip(self.spec.input_names, inputs):
            if not self.context.set_input_shape(name, tuple(value.shape)):
                raise EngineError(f"{self.spec.name}: {name} shaped {tuple(value.shape)} is outside the plan's profile")
            self._bind(name, value)
        made = list(outputs) or [
            aligned_empty(tuple(self.context.get_tensor_shape(name)), self.dtypes[name], self.device) for name in self.spec.output_names
        ]
        for name, output in zip(self.spec.output_names, made):
            self._bind(name, output)
        return made

    def _execute(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise EngineError(f"{self.spec.name}: TensorRT execution failed (its log says why)")

    def _capture(self) -> Any:
        """One enqueue on the bound addresses as a CUDA graph; TensorRT's developer guide ("CUDA Graphs")
        asks for one plain enqueue first after shapes change, which the caller has just made."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a capture stream of its own, current inside the block
            self._execute(torch.cuda.current_stream().cuda_stream)
        return graph

    def _bind(self, name: str, tensor: torch.Tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineError(f"{self.spec.name}: TensorRT refused the address of {name} ({tensor.data_ptr():#x})")


class LoadedPlans:
    """Deserialized engines, one execution context each, sharing one block of device memory."""

    def __init__(
        self,
        plans: Mapping[str, bytes],
        specs: Mapping[str, ComponentSpec],
        device: torch.device | str = "cuda",
        stream_handle: Callable[[], int] = lambda: torch.cuda.current_stream().cuda_stream,
        cuda_graphs: bool = False,
    ) -> None:
        trt = import_tensorrt()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engines it made
        self.engines = {}
        for name, plan in plans.items():
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineUnavailable(f"TensorRT could not deserialize the {name} plan (built by another TensorRT?)")
            self.engines[name] = engine
        # One block, the largest any engine needs, for every context (see SharedBlock: one call at a time).
        self.block = SharedBlock(max(engine.device_memory_size_v2 for engine in self.engines.values()), torch.device(device))
        self.runners = {}
        for name, engine in self.engines.items():
            context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is None:
                raise EngineUnavailable(f"TensorRT could not create an execution context for {name}")
            context.set_device_memory(self.block.memory.data_ptr(), self.block.size)
            self.runners[name] = TensorRTRunner(engine, context, specs[name], device, stream_handle, self.block, cuda_graphs)


class TensorRTEngine(PipelineEngine):
    """SDXL Turbo with the UNet and the VAE decoder as TensorRT plans; the text encoders in PyTorch fp16."""

    def __init__(
        self,
        model: str,
        engine_dir: Path,
        manifest: Manifest,
        presets_dir: Path | None = None,
        revision: str | None = None,
        device: str = "cuda",
        cuda_graphs: bool = False,
    ) -> None:
        self.model, self.engine_dir, self.manifest, self.presets_dir = model, engine_dir, manifest, presets_dir
        self.revision, self.device, self.cuda_graphs = revision, torch.device(device), cuda_graphs
        # device="cpu" is for the CPU tests, which run the plans on tests/fake_tensorrt.py's stand-in.
        self.numerics = choose_numerics(device, "fp16" if self.device.type == "cuda" else "fp32")
        plans = [manifest.artefact(engine_dir, name, "plan") for name in (UNET, VAE_DECODER)]
        unet_precision, vae = (plan.details.get("precision", "?") for plan in plans)
        missing = manifest.image_to_image_missing(engine_dir, "plan")
        limits = replace(manifest.build_range.limits(manifest.dims.size_multiple), image_to_image=not missing, image_to_image_reason=missing)
        super().__init__(tensorrt_name(unet_precision, vae), limits)
        self._plans: LoadedPlans | None = None
        self._stream: torch.cuda.Stream | None = None

    def load(self) -> None:
        side = load_text_side(self.model, self.numerics, self.presets_dir, revision=self.revision)
        self.manifest.check_model(self.engine_dir, self.model, side.fingerprint, "plan")
        plans = {}
        for name in self.manifest.present(COMPILED_COMPONENTS, "plan"):
            artefact = self.manifest.artefact(self.engine_dir, name, "plan")
            plan = (self.engine_dir / artefact.path).read_bytes()
            # The bytes deserialized are the bytes hashed: no window for a swap after the check.
            self.manifest.verify_file(
                self.engine_dir, artefact.path, artefact.files[artefact.path], "plan", actual=bytes_sha256(plan)
            )
            plans[name] = plan
        if self.device.type == "cuda":
            self._plans = LoadedPlans(plans, self.manifest.dims.specs(), cuda_graphs=self.cuda_graphs)
            self._stream = torch.cuda.Stream()  # not the default stream: TensorRT synchronises on that one
        else:
            self._plans = LoadedPlans(plans, self.manifest.dims.specs(), self.device, lambda: 0, self.cuda_graphs)
            self._stream = None
        runners = self._plans.runners
        self._pipeline = SDXLTurboPipeline(
            side.text_encoders, runners[UNET], runners[VAE_DECODER], side.config, self.device.type, runners.get(VAE_ENCODER)
        )
        self.info.model_fingerprint = side.fingerprint
        logger.info("loaded TensorRT plans from %s (%s)", self.engine_dir, self.info.name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
        if self._plans is None:
            raise RuntimeError("the engine is not loaded: call load() first")
        with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
            return super().generate(requests)

    def close(self) -> None:
        self._plans = None
        self._stream = None
        super().close()
