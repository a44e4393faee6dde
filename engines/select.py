"""--engine auto|torch|onnxruntime|openvino|tensorrt: which backend runs here, and why (for the log, /readyz and X-Engine).

Each compiled backend has one function, `<backend>_candidate(request)`, that returns its engine
(built, not loaded) or the reason it cannot run here; `CANDIDATES` lists them by --engine name. A
new backend adds its function there. The machine is read through the `probe_*` functions only, so
tests fake the machine at these edges.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from engines.base import EngineUnavailable, ImageEngine
from engines.core.driver import driver_problem, nvidia_driver_version
from engines.core.engine import PipelineEngine
from engines.core.golden import GoldenImage
from engines.core.hardware import GpuInfo, cuda_gpu
from engines.core.specs import COMPILED_COMPONENTS
from engines.manifest import ArtefactKind, Manifest, ManifestError
from engines.models.presets import known_fingerprint
from engines.models.sources import prepare_model

logger = logging.getLogger(__name__)

Candidate = Union[ImageEngine, str]  # the engine, or why it cannot run here


@dataclass(frozen=True)
class EngineRequest:
    engine: str  # auto | torch | onnxruntime | openvino | tensorrt
    model: str
    engine_dir: Path
    device: str = "auto"
    precision: str = "auto"
    presets_dir: Path | None = None
    vae: str = "full"  # full | tiny (the tiny autoencoder: torch and openvino engines)
    revision: str | None = None  # a hub model's commit, tag or branch
    static_sizes: tuple[tuple[int, int], ...] | None = None  # OpenVINO's static compiles; None: the base size
    cuda_graphs: bool = False  # TensorRT: UNet and VAE calls replayed as CUDA graphs


# --- the machine --------------------------------------------------------------------------------------


def probe_gpu() -> GpuInfo | None:
    return cuda_gpu()


def probe_unusable_gpu() -> str | None:
    """Why an NVIDIA GPU that nvidia-smi sees cannot be used here; None when there is none (or it works)."""
    version = nvidia_driver_version()
    if version is None or probe_gpu() is not None:
        return None
    import torch

    cuda = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a build without CUDA"
    return driver_problem(version) or f"an NVIDIA GPU is present (driver {version}) but torch {torch.__version__} ({cuda}) cannot use it"


def probe_tensorrt() -> str | None:
    from engines.backends.tensorrt_engine import tensorrt_version

    return tensorrt_version()


def probe_onnxruntime() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


# --- one function per backend -------------------------------------------------------------------------


def _check_model_and_files(request: EngineRequest, manifest: Manifest, kind: ArtefactKind) -> None:
    """Refuse engines of another model, and any `kind` file whose hash is not the manifest's."""
    manifest.check_model(request.engine_dir, request.model, known_fingerprint(request.model), kind)
    manifest.verify_files(request.engine_dir, kind)


def with_golden(engine: PipelineEngine, manifest: Manifest) -> PipelineEngine:
    """Give a built engine the golden image its build recorded for its numerics, to check at warm-up."""
    recorded = manifest.golden.get(engine.info.name)
    engine.golden = None if recorded is None else GoldenImage.from_json(recorded)
    if recorded is None:
        logger.info("self-test: the build recorded no image for %s; the warm-up checks only for a broken image", engine.info.name)
    return engine


TINY_VAE_ENGINES = "--vae tiny runs on the torch and openvino engines"


def tensorrt_candidate(request: EngineRequest) -> Candidate:
    if request.vae == "tiny":
        return TINY_VAE_ENGINES
    if request.device == "cpu":
        return "--device cpu asks for the CPU"
    gpu = probe_gpu()
    if gpu is None:
        return probe_unusable_gpu() or "no CUDA GPU is visible"
    version = probe_tensorrt()
    if version is None:
        from engines.backends.tensorrt_engine import INSTALL_HINT

        return f"TensorRT is not installed ({INSTALL_HINT})"
    try:
        manifest = Manifest.read(request.engine_dir, request.model)
        manifest.check_tensorrt(request.engine_dir, gpu, version)  # cheap checks before hashing gigabytes
        _check_model_and_files(request, manifest, "plan")
    except ManifestError as exc:
        return str(exc)
    from engines.backends.tensorrt_engine import TensorRTEngine

    return with_golden(TensorRTEngine(request.model, request.engine_dir, manifest, request.presets_dir, revision=request.revision,
                                      cuda_graphs=request.cuda_graphs), manifest)


def onnxruntime_candidate(request: EngineRequest) -> Candidate:
    if request.vae == "tiny":
        return TINY_VAE_ENGINES
    if probe_onnxruntime() is None:
        return "onnxruntime is not installed (pip install '.[onnx]')"
    try:
        manifest = Manifest.read(request.engine_dir, request.model, "onnx")
        _check_model_and_files(request, manifest, "onnx")
    except ManifestError as exc:
        return str(exc)
    from engines.backends.onnxruntime_engine import OnnxRuntimeEngine

    return with_golden(OnnxRuntimeEngine(
        request.model, request.engine_dir, manifest, request.device, request.precision, request.presets_dir, revision=request.revision
    ), manifest)


def probe_openvino() -> str | None:
    from engines.backends.openvino_engine import openvino_version

    return openvino_version()


def openvino_candidate(request: EngineRequest) -> Candidate:
    if request.device == "cuda":
        return "--device cuda asks for the GPU"
    version = probe_openvino()
    if version is None:
        from engines.backends.openvino_engine import INSTALL_HINT

        return f"OpenVINO is not installed ({INSTALL_HINT})"
    int8 = request.precision == "int8"
    kind: ArtefactKind = "openvino_int8" if int8 else "openvino"
    try:
        manifest = Manifest.read(request.engine_dir, request.model, kind)
        manifest.artefact(request.engine_dir, COMPILED_COMPONENTS[0], kind)  # a --target cpu (int8) build at all?
        manifest.check_model(request.engine_dir, request.model, known_fingerprint(request.model), kind)
        manifest.verify_openvino_files(request.engine_dir, int8)
    except ManifestError as exc:
        return str(exc)
    from engines.backends.openvino_engine import OpenVINOEngine

    return with_golden(OpenVINOEngine(
        request.model, request.engine_dir, manifest, request.precision, request.presets_dir, vae=request.vae, revision=request.revision,
        static_sizes=request.static_sizes,
    ), manifest)


CANDIDATES: dict[str, Callable[[EngineRequest], Candidate]] = {
    "tensorrt": tensorrt_candidate,
    "openvino": openvino_candidate,
    "onnxruntime": onnxruntime_candidate,
}


def _torch(request: EngineRequest) -> ImageEngine:
    from engines.backends.torch_engine import TorchEngine

    return TorchEngine(request.model, request.device, request.precision, request.presets_dir, vae=request.vae, revision=request.revision)


# --- the choice -----------------------------------------------------------------------------------------


def select_engine(request: EngineRequest) -> ImageEngine:
    """Build (not load) the engine asked for; raises EngineUnavailable with the reason it cannot run."""
    if request.engine == "torch":
        engine, reason = _torch(request), "asked for with --engine torch"
    elif request.engine == "auto":
        engine, reason = _auto(request)
    elif request.engine in CANDIDATES:
        candidate = CANDIDATES[request.engine](request)
        if isinstance(candidate, str):
            raise EngineUnavailable(f"--engine {request.engine} cannot run here: {candidate}")
        engine, reason = candidate, f"asked for with --engine {request.engine}"
    else:
        raise EngineUnavailable(f"--engine {request.engine} is not available in this build")
    engine.info.selection_reason = reason
    logger.info("engine: %s (%s)", engine.info.name, reason)
    return engine


def prepare_and_select(request: EngineRequest) -> ImageEngine:
    """What the service does before it listens (the benchmarks' in-process engine too): fetch the
    model's files, a hub model's revision resolved to the commit the load then reads, and build the
    engine. Raises EngineUnavailable, saying why."""
    prepared = prepare_model(request.model, request.revision, request.presets_dir)
    return select_engine(dataclasses.replace(request, revision=prepared.revision))


def _auto(request: EngineRequest) -> tuple[ImageEngine, str]:
    """TensorRT when it can run here; on a CPU, OpenVINO when a matching build exists; else PyTorch
    (fp16 on a GPU; bf16 or fp32 on a CPU, where it is faster than ONNX Runtime's fp32 graphs)."""
    tensorrt = tensorrt_candidate(request)
    if not isinstance(tensorrt, str):
        return tensorrt, f"auto: the TensorRT plans in {request.engine_dir} match this GPU, this TensorRT and the model"
    reasons = [f"not TensorRT ({tensorrt})"]
    unusable = probe_unusable_gpu() if request.device != "cpu" else None
    if unusable is not None:
        # Loud on purpose: a GPU machine quietly serving from its CPU is 100 times slower.
        logger.warning("THE GPU IS NOT USED: %s; falling back to the CPU", unusable)
        reasons = [f"THE GPU IS NOT USED: {unusable}"]
    if probe_gpu() is None or request.device == "cpu":
        openvino = openvino_candidate(request)
        if not isinstance(openvino, str):
            return openvino, f"auto: {reasons[0]}; the OpenVINO IR in {request.engine_dir} matches the model"
        reasons.append(f"not OpenVINO ({openvino})")
        if request.precision == "int8":
            raise EngineUnavailable(f"--precision int8 runs on an OpenVINO int8 build only, and none can run here: {openvino}")
    engine = _torch(request)
    return engine, f"auto: {'; '.join(reasons)}; {engine.info.name} is the fastest other path here"
