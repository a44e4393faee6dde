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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from engines.backends.openvino_engine import INSTALL_HINT as OPENVINO_INSTALL_HINT
from engines.backends.openvino_engine import openvino_version
from engines.backends.tensorrt_engine import INSTALL_HINT, tensorrt_version
from engines.base import BUILD_PRECISIONS, TARGETS, EngineUnavailable
from engines.build.onnx_export import EXPORT_FORMAT, OPSET, check_onnx, export_modules, export_onnx, model_dims
from engines.build.openvino_export import OPENVINO_FORMAT, check_inputs, check_openvino, convert_to_openvino, torch_output
from engines.build.tensorrt_plans import build_plan
from engines.core.files import file_sha256, package_version
from engines.core.hardware import GpuInfo, cpu_features, cuda_gpu
from engines.core.numerics import tensorrt_vae_precision
from engines.core.specs import COMPILED_COMPONENTS, UNET, BuildRange, ComponentSpec, ModelDims
from engines.manifest import MANIFEST_NAME, Artefact, ArtefactKind, ComponentEntry, Manifest, ManifestError, inputs_key
from engines.models.components import SDXLComponents
from engines.models.presets import known_fingerprint
from engines.models.sources import load_components

logger = logging.getLogger(__name__)

TIMING_CACHE = "timing.cache"


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
    tolerance: float = 1e-2  # largest relative error of an ONNX graph against torch


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
    """The torch model, loaded (in float32, on the CPU) only when something must be exported."""

    def __init__(self, request: BuildRequest) -> None:
        self.request = request

    @functools.cached_property
    def components(self) -> SDXLComponents:
        logger.info("loading %s in float32", self.request.model)
        try:
            components = load_components(self.request.model, torch.float32, self.request.presets_dir)
        except EngineUnavailable as exc:
            raise BuildError(str(exc)) from exc
        # Nothing is built from the text encoders (3 GB in float32 for SDXL): free them before the
        # conversions, which hold a second copy of the UNet for a while.
        components.text_encoder = components.text_encoder_2 = None
        gc.collect()
        return components

    @functools.cached_property
    def modules(self) -> dict[str, torch.nn.Module]:
        return export_modules(self.components)

    @property
    def fingerprint(self) -> str:
        return known_fingerprint(self.request.model) or self.components.fingerprint

    def release(self, component: str) -> None:
        """Drop a component's torch weights once nothing more is made from them (the full UNet is 10 GB)."""
        self.__dict__.get("modules", {}).pop(component, None)
        setattr(self.components, "unet" if component == UNET else "vae", None)
        gc.collect()


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


def build(request: BuildRequest) -> BuildReport:
    """Export, build and record what is missing or stale; raises BuildError with a one-line reason."""
    # 1. The machine, the previous build, the model.
    if request.precision not in BUILD_PRECISIONS:
        raise BuildError(f"precision must be one of {', '.join(BUILD_PRECISIONS)}, got {request.precision!r}")
    if request.target not in TARGETS:
        raise BuildError(f"target must be one of {', '.join(TARGETS)}, got {request.target!r}")
    target = check_target(request.onnx_only, request.target)
    to_openvino = request.target == "cpu"
    previous = _previous_manifest(request.out)
    model = _Model(request)
    fingerprint = model.fingerprint
    same_model = previous is not None and previous.fingerprint == fingerprint and previous.model == request.model
    dims = previous.dims if same_model and previous is not None else model_dims(model.components)
    try:
        request.build_range.check(dims.size_multiple)
    except ValueError as exc:
        raise BuildError(f"{exc} (this model's images must be multiples of {dims.size_multiple})") from exc

    # 2. Each component: its ONNX graph, then its plan.
    manifest = Manifest(
        model=request.model,
        fingerprint=fingerprint,
        dims=dims,
        build_range=request.build_range,
        versions=library_versions(None if target is None else target.tensorrt, openvino_version() if to_openvino else None),
        gpu=None if target is None else target.gpu,
        cpu=cpu_features() if to_openvino else None,
    )
    report = BuildReport(manifest)
    progress = _Progress(len(COMPILED_COMPONENTS) * (1 if target is None else 2))
    reusable = None if request.force else previous
    specs = dims.specs()
    for name in COMPILED_COMPONENTS:
        if to_openvino:
            ir = _openvino(reusable, request, model, specs[name], dims, manifest, progress, report)
            manifest.components[name] = ComponentEntry(None, openvino=ir)
            continue
        key = inputs_key(
            {
                "component": name,
                "fingerprint": fingerprint,
                "format": EXPORT_FORMAT,
                "opset": OPSET,
                "versions": {k: manifest.versions[k] for k in ("torch", "diffusers", "onnx")},
            }
        )
        onnx = _reuse(reusable, request.out, name, "onnx", key)
        if onnx is None:
            with progress.step(f"exporting {name} to ONNX"):
                onnx = _export(model, specs[name], dims, request, key)
            report.made.append(onnx.path)
        else:
            progress.skip(f"exporting {name} to ONNX")
            report.reused.append(onnx.path)
        plan = None
        if target is not None:
            plan = _plan(reusable, request, target, specs[name], onnx, progress, report)
        manifest.components[name] = ComponentEntry(onnx, plan)

    # 3. The manifest, only when something changed (a second run leaves every file as it was).
    if previous is None or previous.to_json() != manifest.to_json():
        manifest.write(request.out)
        report.manifest_written = True
    return report


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


def _export(model: _Model, spec: ComponentSpec, dims: ModelDims, request: BuildRequest, key: str) -> Artefact:
    module = model.modules[spec.name]
    path = export_onnx(module, spec, dims, request.out / spec.name)
    check = check_onnx(path, module, spec, dims)
    logger.info("%s in ONNX Runtime against torch: %s", spec.name, check.describe())
    if not check.max_rel <= request.tolerance:
        raise BuildError(f"the exported {spec.name} does not match torch: {check.describe()} (tolerance {request.tolerance:g})")
    return Artefact(
        path=str(path.relative_to(request.out)),
        files=files_with_hashes(path.parent, request.out),
        key=key,
        details={"opset": OPSET, "check": check.to_json()},
    )


def _openvino(
    previous: Manifest | None,
    request: BuildRequest,
    model: _Model,
    spec: ComponentSpec,
    dims: ModelDims,
    manifest: Manifest,
    progress: _Progress,
    report: BuildReport,
) -> Artefact:
    """Convert one component to OpenVINO IR straight from torch (or reuse an intact earlier one)."""
    key = inputs_key(
        {
            "component": spec.name,
            "fingerprint": manifest.fingerprint,
            "format": OPENVINO_FORMAT,
            "versions": {k: manifest.versions[k] for k in ("torch", "diffusers", "openvino")},
        }
    )
    what = f"converting {spec.name} to OpenVINO IR"
    reused = _reuse(previous, request.out, spec.name, "openvino", key)
    if reused is not None:
        progress.skip(what)
        report.reused.append(reused.path)
        return reused
    with progress.step(what):
        samples = check_inputs(spec, dims)
        expected = torch_output(model.modules[spec.name], spec, samples)
        path = convert_to_openvino(model.modules[spec.name], spec, dims, request.out / f"{spec.name}.openvino")
        model.release(spec.name)  # before OpenVINO compiles an f32 copy for the check: one copy at a time
        check = check_openvino(path, spec, samples, expected)
    logger.info("%s in OpenVINO (f32) against torch: %s", spec.name, check.describe())
    if not check.max_rel <= request.tolerance:
        raise BuildError(f"the converted {spec.name} does not match torch: {check.describe()} (tolerance {request.tolerance:g})")
    report.made.append(str(path.relative_to(request.out)))
    return Artefact(
        path=str(path.relative_to(request.out)),
        files=files_with_hashes(path.parent, request.out),
        key=key,
        details={"weights": "fp16", "check": check.to_json()},
    )


def _plan(
    previous: Manifest | None,
    request: BuildRequest,
    target: _Target,
    spec: ComponentSpec,
    onnx: Artefact,
    progress: _Progress,
    report: BuildReport,
) -> Artefact:
    precision = request.precision if spec.name == UNET else tensorrt_vae_precision(target.gpu.compute_capability)
    profile = spec.profile(request.build_range)
    details = {
        "precision": precision,
        "profile": {name: [list(shape) for shape in shapes] for name, shapes in profile.items()},
        "optimization_level": request.optimization_level,
    }
    key = inputs_key(
        {"onnx": onnx.files, "tensorrt": target.tensorrt, "gpu": [target.gpu.name, target.gpu.compute_capability], **details}
    )
    what = f"building the {precision} TensorRT plan for {spec.name}"
    reused = _reuse(previous, request.out, spec.name, "plan", key)
    if reused is not None:
        progress.skip(what)
        report.reused.append(reused.path)
        return reused
    plan_name = f"{spec.name}.plan"
    with progress.step(what):
        build_plan(
            request.out / onnx.path,
            request.out / plan_name,
            profile,
            precision,
            request.out / TIMING_CACHE,
            request.optimization_level,
        )
    report.made.append(plan_name)
    return Artefact(plan_name, {plan_name: file_sha256(request.out / plan_name)}, key, details)
