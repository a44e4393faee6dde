"""The build step behind build_engines.py: export ONNX, build TensorRT plans (--target gpu) or convert
to OpenVINO IR (--target cpu), write manifest.json.

Every artefact carries a key, a hash of everything that decides its bytes (the model's fingerprint,
library versions, profile, precision, GPU). A run whose keys match the manifest and whose files
still hash to it does nothing; `force` redoes everything.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from engines.backends.openvino_engine import INSTALL_HINT as OPENVINO_INSTALL_HINT
from engines.backends.openvino_engine import openvino_version
from engines.backends.tensorrt_engine import INSTALL_HINT, tensorrt_version
from engines.base import BUILD_PRECISIONS, TARGETS, EngineUnavailable
from engines.build.onnx_export import EXPORT_FORMAT, OPSET, check_graph_types, check_onnx, export_modules, export_onnx, model_dims
from engines.build.openvino_export import (
    IR_FILE, OPENVINO_FORMAT, check_inputs, check_openvino, compress_to_int8, convert_to_openvino, text_check_inputs, text_torch_output,
    torch_output,
)
from engines.build.openvino_int8 import (
    CALIBRATION_PROMPTS, MIN_PSNR_DB, FloatModel, Int8Options, calibration_inputs, calibration_prompts, describe,
    image_error, images, quantize,
)
from engines.build.tensorrt_plans import PlanBuildError, build_plan
from engines.core.engine import PipelineEngine
from engines.core.files import file_sha256, package_version
from engines.core.golden import GoldenImage, golden_request, self_test_problem
from engines.core.hardware import GpuInfo, cpu_features, cuda_gpu
from engines.core.modules import TextEncoderModule
from engines.core.numerics import PRECISION_NAMES, openvino_float_hint, tensorrt_graph
from engines.core.resident import peak_rss_bytes, releasing_mapped_pages, trim_heap
from engines.core.specs import (
    COMPILED_COMPONENTS, TEXT_COMPONENTS, TEXT_ENCODER_2, UNET, VAE_DECODER, VAE_ENCODER, BuildRange, ComponentSpec, text_encoder_spec,
)
from engines.manifest import MANIFEST_NAME, Artefact, ArtefactKind, ComponentEntry, Manifest, ManifestError, inputs_key
from engines.models.components import SDXLComponents
from engines.models.sources import load_components, model_fingerprint

logger = logging.getLogger(__name__)

# The int8 text encoders' largest relative error against torch (max |error| / max |torch|) that
# still keeps them: the float IR's own is about 1e-3 (fp16-stored weights).
TEXT_INT8_TOLERANCE = 2e-2
# Bump when plans are built differently: it is part of every plan's key. 2: strongly typed, precision read back.
PLAN_FORMAT = 2


class BuildError(Exception):
    """A build that cannot go on; the message is one line a person can act on."""


@dataclass(frozen=True)
class BuildRequest:
    model: str
    out: Path
    build_range: BuildRange = BuildRange()
    precision: str = "fp16"  # the UNet's, in TensorRT; the VAE stays out of fp16
    onnx_only: bool = False
    target: str = "gpu"  # gpu: ONNX + TensorRT plans; cpu: OpenVINO IR
    force: bool = False
    optimization_level: int = 3
    presets_dir: Path | None = None
    revision: str | None = None  # a hub model's commit, tag or branch
    tolerance: float = 1e-2  # largest relative error of an ONNX graph against torch
    int8_min_psnr: float = MIN_PSNR_DB  # --precision int8: the int8 images' least PSNR against the float ones
    int8: Int8Options = Int8Options()  # --precision int8: how it is calibrated and quantized
    text_int8_tolerance: float = TEXT_INT8_TOLERANCE  # --target cpu: int8 text encoder weights within this of torch


@dataclass
class BuildReport:
    manifest: Manifest
    made: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    manifest_written: bool = False


@dataclass(frozen=True)
class _Target:
    gpu: GpuInfo
    tensorrt: str


def library_versions(tensorrt: str | None, openvino: str | None = None) -> dict[str, str | None]:
    return {
        "torch": package_version("torch"),
        "diffusers": package_version("diffusers"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime", "onnxruntime-gpu"),  # one module, two package names
        "tensorrt": tensorrt,
        "openvino": openvino,
    }


def files_with_hashes(directory: Path, root: Path) -> dict[str, str]:
    """{path relative to root: SHA-256} for every file of an exported component."""
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


def check_target(onnx_only: bool, target: str = "gpu") -> _Target | None:
    """Before any minute of work: can this machine build what was asked?"""
    if target == "cpu":
        if onnx_only:
            raise BuildError("--onnx-only and --target cpu ask for different builds: give one of them")
        if openvino_version() is None:
            raise BuildError(f"--target cpu converts to OpenVINO, which is not installed: {OPENVINO_INSTALL_HINT}")
        return None
    if onnx_only:
        return None
    gpu = cuda_gpu()
    if gpu is None:
        raise BuildError(
            "building TensorRT plans needs an NVIDIA GPU with CUDA, and torch sees none here; "
            "add --onnx-only to export the ONNX graphs for the ONNX Runtime backend"
        )
    version = tensorrt_version()
    if version is None:
        raise BuildError(f"building TensorRT plans needs TensorRT: {INSTALL_HINT}; or add --onnx-only")
    return _Target(gpu, version)


class _Model:
    """The torch model, loaded (on the CPU) only when something must be exported: in float32 for
    ONNX; in float16, the precision the IR stores, for OpenVINO (openvino_export.py converts the
    16-bit UNet as it is: a float32 SDXL UNet is 10 GB)."""

    def __init__(self, request: BuildRequest) -> None:
        self.request = request
        self.dtype = torch.float16 if request.target == "cpu" else torch.float32

    @functools.cached_property
    def components(self) -> SDXLComponents:
        logger.info("loading %s in %s", self.request.model, str(self.dtype).removeprefix("torch."))
        try:
            components = load_components(self.request.model, self.dtype, self.request.presets_dir, revision=self.request.revision)
        except EngineUnavailable as exc:
            raise BuildError(str(exc)) from exc
        # Only a CPU build converts the text encoders (first, then frees them); elsewhere free them
        # (3 GB in float32 for SDXL) before the exports, which hold a second copy of the UNet for a while.
        if self.request.target != "cpu":
            components.text_encoder = components.text_encoder_2 = None
            gc.collect()
        return components

    @functools.cached_property
    def modules(self) -> dict[str, torch.nn.Module]:
        # The VAE is traced in float32 (diffusers' decoder casts its input to its weights' dtype); it
        # is 84 M parameters, and the IR stores it in float16 all the same.
        self.components.vae.float()
        return export_modules(self.components)

    def release(self, component: str) -> None:
        """Drop a component's torch weights once nothing more is made from them (the full UNet is 10 GB)."""
        if "components" not in self.__dict__ or component == VAE_ENCODER:
            return  # never loaded; or the encoder, whose VAE the decoder still needs (its release frees it)
        if component in TEXT_COMPONENTS:
            setattr(self.components, component, None)
            gc.collect()
            return
        modules = self.__dict__.get("modules", {})
        modules.pop(component, None)
        if component != UNET:
            modules.pop(VAE_ENCODER, None)  # the decoder's release frees the VAE both wrappers hold
        setattr(self.components, "unet" if component == UNET else "vae", None)
        gc.collect()
        trim_heap()  # else glibc keeps GBs of the freed UNet and the converter for itself
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.done += 1
        logger.info("[%d/%d] %s ...", self.done, self.total, what)
        started = time.monotonic()
        yield
        logger.info("[%d/%d] %s: done in %.1f s", self.done, self.total, what, time.monotonic() - started)

    def skip(self, what: str) -> None:
        self.done += 1
        logger.info("[%d/%d] %s: up to date", self.done, self.total, what)


@dataclass
class _Run:
    """One build in progress: what it may reuse, where it reports."""

    request: BuildRequest
    manifest: Manifest
    previous: Manifest | None  # None with --force: nothing is reused
    progress: _Progress
    report: BuildReport

    def artefact(self, component: str, kind: ArtefactKind, key: str, what: str, make: Callable[[], Artefact]) -> Artefact:
        """The previous artefact when its key matches and its files are intact; else `make()` one."""
        reused = _reuse(self.previous, self.request.out, component, kind, key)
        if reused is not None:
            self.progress.skip(what)
            self.report.reused.append(reused.path)
            return reused
        with self.progress.step(what):
            made = make()
        self.report.made.append(made.path)
        return made


def build(request: BuildRequest) -> BuildReport:
    """Export, build and record what is missing or stale; raises BuildError with a one-line reason."""
    # 1. The machine, the previous build, the model (its fingerprint is read without loading weights).
    if request.precision not in BUILD_PRECISIONS:
        raise BuildError(f"precision must be one of {', '.join(BUILD_PRECISIONS)}, got {request.precision!r}")
    if request.target not in TARGETS:
        raise BuildError(f"target must be one of {', '.join(TARGETS)}, got {request.target!r}")
    if request.precision == "int8" and request.target != "cpu":
        raise BuildError("--precision int8 quantizes OpenVINO IR for the CPU: add --target cpu")
    target = check_target(request.onnx_only, request.target)
    to_openvino = request.target == "cpu"
    previous = _previous_manifest(request.out)
    model = _Model(request)
    try:
        fingerprint = model_fingerprint(request.model, request.revision)
    except EngineUnavailable as exc:
        raise BuildError(str(exc)) from exc
    same_model = previous is not None and previous.fingerprint == fingerprint and previous.model == request.model
    dims = previous.dims if same_model and previous is not None else model_dims(model.components)
    try:
        request.build_range.check(dims.size_multiple)
    except ValueError as exc:
        raise BuildError(f"{exc} (this model's images must be multiples of {dims.size_multiple})") from exc

    manifest = Manifest(
        model=request.model,
        fingerprint=fingerprint,
        dims=dims,
        build_range=request.build_range,
        versions=library_versions(None if target is None else target.tensorrt, openvino_version() if to_openvino else None),
        gpu=None if target is None else target.gpu,
        cpu=cpu_features() if to_openvino else None,
    )
    steps = len(COMPILED_COMPONENTS) if target is None else 2 * len(COMPILED_COMPONENTS) + _typed_graphs(request)
    steps += len(TEXT_COMPONENTS) if to_openvino else 0
    int8 = to_openvino and request.precision == "int8"
    steps += int8
    run = _Run(request, manifest, None if request.force else previous, _Progress(steps), BuildReport(manifest))
    specs = dims.specs()

    # 2. Everything made from torch: each component's float32 ONNX graph (or OpenVINO IR), and for
    #    TensorRT the graph in the precision its plan computes in. Each torch component is freed
    #    once its graphs exist. A CPU build converts the text encoders first (the smallest).
    if to_openvino:
        for name in TEXT_COMPONENTS:
            manifest.components[name] = ComponentEntry(None, openvino=_openvino_text(run, model, name))
            model.release(name)
    for name in COMPILED_COMPONENTS:
        if to_openvino:
            manifest.components[name] = ComponentEntry(None, openvino=_openvino(run, model, specs[name]))
        else:
            onnx = _onnx(run, model, specs[name])
            typed = _typed_onnx(run, model, specs[name], onnx) if target is not None else None
            manifest.components[name] = ComponentEntry(onnx, typed_onnx=typed)
        model.release(name)

    # 3. TensorRT plans, with no torch model left in memory.
    if target is not None:
        for name in COMPILED_COMPONENTS:
            manifest.components[name].plan = _plan(run, target, specs[name], manifest.components[name])

    # 3b. int8 IR, quantized from the float IR with no torch model left (--target cpu --precision int8).
    if int8:
        _openvino_int8(run)

    # 4. The golden image: what the engine just built makes for a fixed prompt and seed, which the
    #    service makes again at warm-up (engines/core/golden.py).
    if previous is not None and same_model and not request.force:
        manifest.golden = dict(previous.golden)
    _golden(request, manifest, "openvino" if to_openvino else "onnx" if target is None else "plan")

    # 5. The manifest, only when something changed (a second run leaves every file as it was).
    if previous is None or previous.to_json() != manifest.to_json():
        manifest.write(request.out)
        run.report.manifest_written = True
    quality = manifest.components[UNET].openvino_int8.details["quality"] if int8 else None
    if quality is not None and not quality["usable"]:
        raise BuildError(
            f"the int8 images are too far from the float ones: PSNR {quality['psnr_db']:.1f} dB, below the "
            f"{quality['min_psnr_db']:g} dB of --int8-min-psnr; {manifest.to_json()['model']['source']}'s int8 build "
            f"is recorded as unusable, and the float IR in {request.out} still serves (--precision fp32 or bf16)"
        )
    return run.report


def _runtime_engine(request: BuildRequest, manifest: Manifest, kind: ArtefactKind) -> PipelineEngine | None:
    """The engine the service runs from this build by default; None where it cannot run here."""
    if kind == "openvino":
        from engines.backends.openvino_engine import OpenVINOEngine

        return OpenVINOEngine(request.model, request.out, manifest, "auto", request.presets_dir, revision=request.revision)
    if kind == "onnx":
        from engines.backends.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(request.model, request.out, manifest, "auto", "auto", request.presets_dir, revision=request.revision)
    if not torch.cuda.is_available():
        return None
    from engines.backends.tensorrt_engine import TensorRTEngine

    return TensorRTEngine(request.model, request.out, manifest, request.presets_dir, revision=request.revision)


def _golden(request: BuildRequest, manifest: Manifest, kind: ArtefactKind) -> None:
    """Record the built engine's image for the golden prompt, unless one made from these very files is there."""
    engine = _runtime_engine(request, manifest, kind)
    if engine is None:
        logger.warning("self-test: no CUDA device runs the plans here, so no golden image is recorded")
        return
    names = manifest.present(COMPILED_COMPONENTS + TEXT_COMPONENTS, kind)
    key = inputs_key({"files": {name: manifest.artefact(request.out, name, kind).files for name in names}})
    recorded = manifest.golden.get(engine.info.name)
    if recorded is not None and recorded.get("key") == key:
        logger.info("self-test: the golden image for %s is up to date", engine.info.name)
        return
    started = time.perf_counter()
    engine.load()
    try:
        (image,) = engine.generate([golden_request(*engine.warm_up_size)])
    finally:
        engine.close()
    problem = self_test_problem(image, None, engine.info.name)
    if problem is not None:
        raise BuildError(f"the built engine {engine.info.name} is broken: {problem}")
    manifest.golden[engine.info.name] = {**GoldenImage.of(image, engine.info.name).to_json(), "key": key}
    logger.info("self-test: golden image made by %s (mean %.1f, std %.1f), %.1f s", engine.info.name, image.mean(), image.std(), time.perf_counter() - started)


def _typed_graphs(request: BuildRequest) -> int:
    return sum(tensorrt_graph(name, request.precision)[0] != torch.float32 for name in COMPILED_COMPONENTS)


def _previous_manifest(out: Path) -> Manifest | None:
    if not (out / MANIFEST_NAME).exists():
        return None
    try:
        return Manifest.read(out)
    except ManifestError as exc:
        logger.warning("ignoring the previous manifest: %s", exc)
        return None


def _reuse(previous: Manifest | None, out: Path, component: str, kind: ArtefactKind, key: str) -> Artefact | None:
    """The previous artefact if it was made from the same inputs and its files are intact."""
    entry = None if previous is None else previous.components.get(component)
    artefact = None if entry is None else entry.artefact(kind)
    if artefact is None or artefact.key != key:
        return None
    for relative, expected in artefact.files.items():
        path = out / relative
        if not path.is_file() or file_sha256(path) != expected:
            logger.warning("%s changed since it was built; making it again", path)
            return None
    return artefact


def _export_key(run: _Run, component: str, **more: Any) -> str:
    versions = {k: run.manifest.versions[k] for k in ("torch", "diffusers", "onnx")}
    return inputs_key(
        {"component": component, "fingerprint": run.manifest.fingerprint, "format": EXPORT_FORMAT, "opset": OPSET,
         "versions": versions, **more}
    )


def _graph_artefact(run: _Run, path: Path, key: str, details: dict[str, Any]) -> Artefact:
    out = run.request.out
    return Artefact(path=str(path.relative_to(out)), files=files_with_hashes(path.parent, out), key=key, details=details)


def _onnx(run: _Run, model: _Model, spec: ComponentSpec) -> Artefact:
    """The float32 graph, checked against torch in ONNX Runtime."""

    def make() -> Artefact:
        module = model.modules[spec.name]
        path = export_onnx(module, spec, run.manifest.dims, run.request.out / spec.name)
        check = check_onnx(path, module, spec, run.manifest.dims)
        logger.info("%s in ONNX Runtime against torch: %s", spec.name, check.describe())
        if not check.max_rel <= run.request.tolerance:
            raise BuildError(
                f"the exported {spec.name} does not match torch: {check.describe()} (tolerance {run.request.tolerance:g})"
            )
        return _graph_artefact(run, path, key, {"opset": OPSET, "check": check.to_json()})

    key = _export_key(run, spec.name)
    return run.artefact(spec.name, "onnx", key, f"exporting {spec.name} to ONNX", make)


def _typed_onnx(run: _Run, model: _Model, spec: ComponentSpec, onnx: Artefact) -> Artefact | None:
    """The graph a strongly typed plan computes in, exported from the module cast in place (no
    second copy of the weights), on the GPU as NVIDIA's demo does; None where the float32 graph is it."""
    dtype, _ = tensorrt_graph(spec.name, run.request.precision)
    if dtype == torch.float32:
        return None
    precision = PRECISION_NAMES[dtype]
    typed_spec = spec.in_dtype(dtype)

    def make() -> Artefact:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        module = model.modules[spec.name].to(device, dtype)
        path = export_onnx(module, typed_spec, run.manifest.dims, run.request.out / f"{spec.name}_{precision}", device)
        try:
            types = check_graph_types(path, typed_spec)
        except ValueError as exc:
            raise BuildError(f"the {precision} graph of {spec.name} is not what TensorRT should build from: {exc}") from exc
        return _graph_artefact(run, path, key, {"opset": OPSET, "precision": precision, "types": types})

    key = _export_key(run, spec.name, precision=precision)
    return run.artefact(spec.name, "typed_onnx", key, f"exporting {spec.name} to ONNX in {precision}", make)


def _openvino(run: _Run, model: _Model, spec: ComponentSpec) -> Artefact:
    """Convert one component to OpenVINO IR straight from torch (or reuse an intact earlier one)."""
    dims = run.manifest.dims

    def make() -> Artefact:
        samples = check_inputs(spec, dims)
        expected = torch_output(model.modules[spec.name], spec, samples)
        path = convert_to_openvino(model.modules[spec.name], spec, dims, run.request.out / f"{spec.name}.openvino")
        model.release(spec.name)  # before OpenVINO compiles an f32 copy for the check: one copy at a time
        check = check_openvino(path, spec, samples, expected)
        logger.info("%s in OpenVINO (f32) against torch: %s", spec.name, check.describe())
        if not check.max_rel <= run.request.tolerance:
            raise BuildError(
                f"the converted {spec.name} does not match torch: {check.describe()} (tolerance {run.request.tolerance:g})"
            )
        return _graph_artefact(run, path, key, {"weights": "fp16", "check": check.to_json()})

    versions = {k: run.manifest.versions[k] for k in ("torch", "diffusers", "openvino")}
    key = inputs_key({"component": spec.name, "fingerprint": run.manifest.fingerprint, "format": OPENVINO_FORMAT, "versions": versions})
    return run.artefact(spec.name, "openvino", key, f"converting {spec.name} to OpenVINO IR", make)


def _openvino_text(run: _Run, model: _Model, name: str) -> Artefact:
    """A CLIP text encoder to OpenVINO IR, checked against torch; then with int8-compressed weights
    where its outputs stay within the build's text_int8_tolerance of torch's (both errors recorded), else float."""
    request, out = run.request, run.request.out

    def make() -> Artefact:
        pooled = name == TEXT_ENCODER_2  # the second encoder's pooled output is the one SDXL reads
        module = TextEncoderModule(getattr(model.components, name), pooled).eval()
        samples = text_check_inputs(model.components.tokenizer_2 if pooled else model.components.tokenizer)
        expected = text_torch_output(module, samples)
        spec = text_encoder_spec(name, expected[0].shape[-1], expected[1].shape[-1] if pooled else None)
        float_dir, int8_dir = out / f"{name}.openvino", out / f"{name}.openvino-int8"
        path = convert_to_openvino(module, spec, run.manifest.dims, float_dir, samples)
        model.release(name)
        check = check_openvino(path, spec, samples, expected)
        logger.info("%s in OpenVINO (f32) against torch: %s", name, check.describe())
        if not check.max_rel <= request.tolerance:
            raise BuildError(f"the converted {name} does not match torch: {check.describe()} (tolerance {request.tolerance:g})")
        int8_check = check_openvino(compress_to_int8(path, int8_dir), spec, samples, expected)
        int8 = int8_check.max_rel <= request.text_int8_tolerance
        logger.info("%s with int8 weights against torch: %s (tolerance %g): %s", name, int8_check.describe(),
                    request.text_int8_tolerance, "int8 kept" if int8 else "float kept")
        shutil.rmtree(float_dir if int8 else int8_dir)
        details = {"weights": "int8" if int8 else "fp16", "check": check.to_json(), "int8_check": int8_check.to_json(),
                   "int8_tolerance": request.text_int8_tolerance}
        return _graph_artefact(run, (int8_dir if int8 else float_dir) / IR_FILE, key, details)

    versions = {k: run.manifest.versions[k] for k in ("torch", "diffusers", "openvino")}
    key = inputs_key({"component": name, "fingerprint": run.manifest.fingerprint, "format": OPENVINO_FORMAT, "versions": versions,
                      "nncf": package_version("nncf"), "int8_tolerance": request.text_int8_tolerance})
    return run.artefact(name, "openvino", key, f"converting {name} to OpenVINO IR", make)


def _openvino_int8(run: _Run) -> None:
    """The UNet (and the VAE decoder where the error allows) quantized to int8 from the float IR,
    with the image error against the float build recorded in the UNet's artefact (see openvino_int8.py)."""
    request, manifest, out = run.request, run.manifest, run.request.out
    # Every float IR the float build runs (the text encoders too) decides the calibration and the reference.
    floats = {name: manifest.components[name].openvino for name in manifest.present(COMPILED_COMPONENTS + TEXT_COMPONENTS, "openvino")}
    size = min(request.build_range.sizes or ((512, 512),))[0]
    settings = {"nncf": package_version("nncf"), "prompts": file_sha256(CALIBRATION_PROMPTS), "size": size,
                "min_psnr_db": request.int8_min_psnr, **request.int8.to_json(),
                "calibrated_in": openvino_float_hint("int8")}  # the float arithmetic the service runs the build in
    key = inputs_key({"float_ir": {name: a.files for name, a in floats.items()}, **settings})
    made: dict[str, Artefact | None] = {VAE_DECODER: None}

    def make() -> Artefact:
        started = time.monotonic()
        # The compiled float IR and NNCF's copies map the IR files: keep only their own copies resident.
        with releasing_mapped_pages(out):
            made = quantized_artefact()
        # Outside the key: what the step cost, for the benchmark's report (VmHWM covers the whole process).
        made.details.update(seconds=time.monotonic() - started, peak_rss_bytes=peak_rss_bytes())
        return made

    def quantized_artefact() -> Artefact:
        float_model = FloatModel.load(request.model, request.presets_dir, out, manifest, settings["calibrated_in"])
        unet_inputs, vae_inputs = calibration_inputs(float_model.pipeline, calibration_prompts(), size, request.int8.samples)
        reference = images(float_model.pipeline, size)
        float_model.pipeline.unet = None  # one compiled UNet at a time: NNCF compiles its own copy next
        gc.collect()
        unet_path, kept_in_float = quantize(out / floats[UNET].path, unet_inputs, out / f"{UNET}.openvino-int8",
                                            keep_ends_in_float=True, options=request.int8, hint=float_model.hint)
        unet_error = image_error(reference, images(float_model.with_runners(unet=unet_path), size), request.int8_min_psnr)
        logger.info("int8 UNet, float VAE decoder, against the float IR: %s", describe(unet_error))
        vae_dir = out / f"{VAE_DECODER}.openvino-int8"
        vae_path, _ = quantize(out / floats[VAE_DECODER].path, vae_inputs, vae_dir, keep_ends_in_float=True,
                               options=request.int8, hint=float_model.hint)
        both_error = image_error(reference, images(float_model.with_runners(unet=unet_path, vae=vae_path), size), request.int8_min_psnr)
        logger.info("int8 UNet and int8 VAE decoder against the float IR: %s", describe(both_error))
        int8_vae = both_error["usable"] and unet_error["usable"]
        if int8_vae:
            made[VAE_DECODER] = _graph_artefact(run, vae_path, key, {"weights": "int8", **settings})
        else:
            shutil.rmtree(vae_dir)
            logger.info("the VAE decoder stays in float: with it in int8 the images are not usable")
        quality = both_error if int8_vae else unet_error
        logger.log(logging.INFO if quality["usable"] else logging.ERROR, "int8 build quality (threshold %g dB): %s",
                   request.int8_min_psnr, describe(quality))
        details = {
            "weights": "int8", **settings, "quality": quality, "vae_decoder": "int8" if int8_vae else "float",
            "errors": {"unet_int8": unet_error, "unet_and_vae_int8": both_error},
            "calibration": {"unet_inputs": len(unet_inputs), "vae_inputs": len(vae_inputs)},
            "kept_in_float": kept_in_float,
        }
        return _graph_artefact(run, unet_path, key, details)

    what = "quantizing to int8 with NNCF and measuring the image error"
    unet = run.artefact(UNET, "openvino_int8", key, what, make)
    if unet.path in run.report.reused and unet.details.get("vae_decoder") == "int8":
        made[VAE_DECODER] = _reuse(run.previous, out, VAE_DECODER, "openvino_int8", key)
        if made[VAE_DECODER] is None:  # the int8 VAE decoder changed since: both again
            with run.progress.step(what):
                unet = make()
    manifest.components[UNET].openvino_int8 = unet
    manifest.components[VAE_DECODER].openvino_int8 = made[VAE_DECODER]


def timing_cache_name(target: _Target) -> str:
    """Timings hold only for one GPU model and one TensorRT: one cache file per pair."""
    gpu = re.sub(r"[^a-z0-9]+", "-", target.gpu.name.lower()).strip("-")
    return f"timing-{gpu}-sm{target.gpu.compute_capability.replace('.', '')}-trt{target.tensorrt}.cache"


def _plan(run: _Run, target: _Target, spec: ComponentSpec, entry: ComponentEntry) -> Artefact:
    """A strongly typed plan from the component's typed graph (else its float32 one); its precision is read back."""
    request = run.request
    graph = entry.typed_onnx or entry.onnx
    assert graph is not None  # the graphs were made in step 2
    _, tf32 = tensorrt_graph(spec.name, request.precision)
    profile = spec.profile(request.build_range)
    settings = {
        "format": PLAN_FORMAT,
        "graph": graph.path,
        "tf32": tf32,
        "profile": {name: [list(shape) for shape in shapes] for name, shapes in profile.items()},
        "optimization_level": request.optimization_level,
    }
    key = inputs_key(
        {"graph_files": graph.files, "tensorrt": target.tensorrt, "gpu": [target.gpu.name, target.gpu.compute_capability], **settings}
    )
    plan_name = f"{spec.name}.plan"

    def make() -> Artefact:
        out = request.out
        try:
            facts = build_plan(out / graph.path, out / plan_name, profile, out / timing_cache_name(target), request.optimization_level, tf32)
        except (PlanBuildError, EngineUnavailable) as exc:
            raise BuildError(str(exc)) from exc
        precision = facts.precision(spec.input_names[0])
        logger.info("%s: TensorRT reports %s I/O, layer outputs %s", plan_name, precision, facts.layer_dtypes or "not reported")
        details = {**settings, "precision": precision, **facts.to_json()}
        return Artefact(plan_name, {plan_name: file_sha256(out / plan_name)}, key, details)

    return run.artefact(spec.name, "plan", key, f"building the TensorRT plan for {spec.name} from {graph.path}", make)
