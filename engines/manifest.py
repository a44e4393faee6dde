"""manifest.json: what build_engines.py made, from what, for which GPU, and each file's SHA-256.

A runtime reads it before it trusts a file: a TensorRT plan is executable code, so a plan whose hash,
GPU or TensorRT version does not match is refused, with a message that says how to rebuild.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engines.base import EngineUnavailable
from engines.core.files import bytes_sha256, remembered_sha256, write_atomically
from engines.core.hardware import GpuInfo
from engines.core.specs import COMPILED_COMPONENTS, REQUIRED_COMPONENTS, TEXT_COMPONENTS, UNET, VAE_ENCODER, BuildRange, ModelDims

MANIFEST_NAME = "manifest.json"
VERIFIED_HASHES = ".verified-sha256.json"  # the hashes of files already checked, by identity (files.remembered_sha256)
FORMAT_VERSION = 1
# onnx: the float32 graph (ONNX Runtime, and the reference for checks); typed_onnx: the graph in the
# precision a strongly typed TensorRT plan computes in (the fp16 UNet); plan: a TensorRT engine;
# openvino: the float IR; openvino_int8: the IR NNCF quantized from it (its details hold the quality).
ArtefactKind = Literal["onnx", "typed_onnx", "plan", "openvino", "openvino_int8"]
# What build_engines.py needs besides --model and --out to make each kind again.
BUILD_FLAGS: dict[str, str] = {
    "onnx": " --onnx-only", "typed_onnx": "", "plan": "", "openvino": " --target cpu",
    "openvino_int8": " --target cpu --precision int8",
}


class ManifestError(EngineUnavailable):
    """A manifest or an engine file that must not be used; the message says how to rebuild."""


def inputs_key(inputs: dict[str, Any]) -> str:
    """A hash of everything that decides an artefact's bytes: same key, nothing to redo."""
    return bytes_sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode())


@dataclass
class Artefact:
    path: str  # the file a runtime opens, relative to the engine directory
    files: dict[str, str]  # every file it is made of (an ONNX graph and its external data) -> SHA-256
    key: str  # inputs_key() of what made it
    details: dict[str, Any] = field(default_factory=dict)  # precision, profile, numerical check

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artefact:
        return cls(data["path"], dict(data["files"]), data["key"], dict(data.get("details", {})))


@dataclass
class ComponentEntry:
    onnx: Artefact | None  # None in a --target cpu build, which converts from torch directly
    plan: Artefact | None = None
    openvino: Artefact | None = None
    typed_onnx: Artefact | None = None  # only where the plan is built from another graph than `onnx`
    openvino_int8: Artefact | None = None  # a --precision int8 build; the VAE's only where its error allowed it

    def artefact(self, kind: ArtefactKind) -> Artefact | None:
        return getattr(self, kind)


@dataclass
class Manifest:
    model: str  # as given to --model
    fingerprint: str  # the model's fingerprint (hub revision or weights hash)
    dims: ModelDims
    build_range: BuildRange
    versions: dict[str, str | None]  # torch, diffusers, onnx, onnxruntime, tensorrt, openvino (None: not used)
    gpu: GpuInfo | None = None  # where the plans were built; None for an ONNX-only build
    cpu: dict[str, Any] | None = None  # a --target cpu build: the processor's features that decide numerics
    components: dict[str, ComponentEntry] = field(default_factory=dict)
    # engine name -> the golden image that engine made right after the build (engines/core/golden.py)
    golden: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- files --------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def artefact(a: Artefact | None) -> dict[str, Any] | None:
            return None if a is None else {"path": a.path, "files": a.files, "key": a.key, "details": a.details}

        return {
            "format": FORMAT_VERSION,
            "model": {"source": self.model, "fingerprint": self.fingerprint},
            "dims": self.dims.to_json(),
            "range": self.build_range.to_json(),
            "versions": self.versions,
            "gpu": None if self.gpu is None else {"name": self.gpu.name, "compute_capability": self.gpu.compute_capability},
            "cpu": self.cpu,
            "components": {
                name: {kind: artefact(c.artefact(kind)) for kind in BUILD_FLAGS} for name, c in self.components.items()
            },
            "golden": self.golden,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {data.get('format')!r}, this code reads format {FORMAT_VERSION}")
        gpu = data.get("gpu")
        return cls(
            model=data["model"]["source"],
            fingerprint=data["model"]["fingerprint"],
            dims=ModelDims.from_json(data["dims"]),
            build_range=BuildRange.from_json(data["range"]),
            versions=dict(data["versions"]),
            gpu=None if gpu is None else GpuInfo(gpu["name"], gpu["compute_capability"]),
            cpu=data.get("cpu"),
            components={
                name: ComponentEntry(
                    **{kind: None if entry.get(kind) is None else Artefact.from_json(entry[kind]) for kind in BUILD_FLAGS}
                )
                for name, entry in data["components"].items()
            },
            golden=dict(data.get("golden") or {}),
        )

    def write(self, directory: Path) -> None:
        """Atomically: a reader sees the old manifest or the new one, never half of one."""
        write_atomically(directory / MANIFEST_NAME, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, directory: Path, model: str = "MODEL", kind: ArtefactKind = "plan") -> Manifest:
        """Raises ManifestError when there is no manifest or it cannot be read (`model`, `kind`: for the hint)."""
        path = directory / MANIFEST_NAME
        command = f"python build_engines.py --model {model} --out {directory}" + BUILD_FLAGS[kind]
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST_NAME} in {directory}: build the engines first with `{command}`")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ManifestError(f"{path} cannot be read ({exc.__class__.__name__}: {exc}); rebuild with `{command} --force`") from exc

    # --- refusals -----------------------------------------------------------------------------------

    def rebuild_command(self, directory: Path, kind: ArtefactKind = "plan", model: str | None = None) -> str:
        """The build_engines.py command line that makes this manifest's engines again (for `model`, if given)."""
        r = self.build_range
        parts = ["python build_engines.py", f"--model {model or self.model}", f"--out {directory}"]
        if (r.min_batch, r.max_batch) != (1, 1):
            parts.append(f"--batch {r.min_batch}-{r.max_batch}")
        if r.sizes is not None:
            parts.append("--sizes " + ",".join(f"{w}x{h}" for w, h in r.sizes))
        else:
            parts.append(f"--min-size {r.min_size[0]} --max-size {r.max_size[0]}")
        return "`" + " ".join(parts) + BUILD_FLAGS[kind] + "`"

    def check_model(self, directory: Path, model: str, fingerprint: str | None, kind: ArtefactKind) -> None:
        """Refuse engines made from another model; `fingerprint` None: only the name can be compared yet."""
        if model != self.model or (fingerprint is not None and fingerprint != self.fingerprint):
            theirs = f"{self.model} ({self.fingerprint})"
            ours = model if fingerprint is None else f"{model} ({fingerprint})"
            raise ManifestError(
                f"the engines in {directory} were built for the model {theirs}, not {ours}; rebuild with "
                + self.rebuild_command(directory, kind, model)
            )

    def check_tensorrt(self, directory: Path, gpu: GpuInfo, tensorrt_version: str) -> None:
        """Refuse plans that are missing, or built for another GPU or another TensorRT."""
        hint = "; rebuild on this machine with " + self.rebuild_command(directory)
        missing = [name for name in REQUIRED_COMPONENTS if not self.has(name, "plan")]
        if missing:
            raise ManifestError(f"{directory} holds no TensorRT plans for {', '.join(missing)} (an --onnx-only build?){hint}")
        if self.gpu != gpu:
            built_for = "an unknown GPU" if self.gpu is None else self.gpu.describe()
            raise ManifestError(f"the plans in {directory} were built for {built_for}, this GPU is {gpu.describe()}{hint}")
        built_with = self.versions.get("tensorrt")
        if built_with != tensorrt_version:
            raise ManifestError(
                f"the plans in {directory} were built with TensorRT {built_with}, this is TensorRT {tensorrt_version}{hint}"
            )
        untyped = [name for name in self.present(COMPILED_COMPONENTS, "plan") if "io_dtypes" not in self.components[name].plan.details]
        if untyped:
            raise ManifestError(
                f"the plans in {directory} for {', '.join(untyped)} record no precision read back from the engine "
                f"(a weakly typed build from before TensorRT 10.12){hint}"
            )

    def has(self, component: str, kind: ArtefactKind) -> bool:
        entry = self.components.get(component)
        return entry is not None and entry.artefact(kind) is not None

    def present(self, components: tuple[str, ...], kind: ArtefactKind) -> list[str]:
        """The required components, and the optional ones (the VAE encoder) this build holds."""
        return [name for name in components if name in REQUIRED_COMPONENTS or self.has(name, kind)]

    def image_to_image_missing(self, directory: Path, kind: ArtefactKind) -> str:
        """'' when the build holds a VAE encoder; else why image-to-image is off, and the command that adds it
        (a build from before image-to-image: text-to-image keeps working)."""
        if self.has(VAE_ENCODER, kind):
            return ""
        return (
            f"the engines in {directory} were built before image-to-image and hold no VAE encoder; rebuild with "
            + self.rebuild_command(directory, kind)
            + " (the UNet and VAE decoder are reused)"
        )

    def artefact(self, directory: Path, component: str, kind: ArtefactKind) -> Artefact:
        entry = self.components.get(component)
        artefact = None if entry is None else entry.artefact(kind)
        if artefact is None:
            raise ManifestError(
                f"{directory}/{MANIFEST_NAME} lists no {kind} file for {component}; rebuild with "
                + self.rebuild_command(directory, kind)
            )
        return artefact

    def openvino_artefacts(self, directory: Path, int8: bool) -> dict[str, tuple[ArtefactKind, Artefact]]:
        """The IR the OpenVINO engine loads, per component: the float IR; with `int8`, the quantized
        UNet and the VAE decoder in int8 where the build kept one (else float). Refuses an int8 build
        whose images were past its error threshold."""
        # A build from before image-to-image has no VAE encoder; one from before text encoder IR, none.
        present = self.present(COMPILED_COMPONENTS + TEXT_COMPONENTS, "openvino")
        if not int8:
            return {name: ("openvino", self.artefact(directory, name, "openvino")) for name in present}
        unet = self.artefact(directory, UNET, "openvino_int8")
        quality = unet.details.get("quality", {})
        if not quality.get("usable"):
            raise ManifestError(
                f"the int8 build in {directory} is marked unusable: its images' PSNR against the float ones is "
                f"{quality.get('psnr_db')} dB, below {quality.get('min_psnr_db')} dB; serve the float IR "
                "(--precision fp32 or bf16), or rebuild with " + self.rebuild_command(directory, "openvino_int8")
            )
        chosen: dict[str, tuple[ArtefactKind, Artefact]] = {UNET: ("openvino_int8", unet)}
        for name in (name for name in present if name != UNET):
            int8_ir = self.components[name].openvino_int8 if name in self.components else None
            chosen[name] = ("openvino_int8", int8_ir) if int8_ir else ("openvino", self.artefact(directory, name, "openvino"))
        return chosen

    def openvino_text_weights(self) -> str | None:
        """The text encoders' IR weights: "fp16" or "int8" when both have them, else both in order
        ("int8-fp16"); None for a build from before text encoder IR (the engine runs them in torch)."""
        if not all(self.has(name, "openvino") for name in TEXT_COMPONENTS):
            return None
        weights = [str(self.components[name].openvino.details["weights"]) for name in TEXT_COMPONENTS]
        return weights[0] if len(set(weights)) == 1 else "-".join(weights)

    def verify_openvino_files(self, directory: Path, int8: bool) -> None:
        """Hash every file the OpenVINO engine will load (see `openvino_artefacts`)."""
        for kind, artefact in self.openvino_artefacts(directory, int8).values():
            for relative, expected in artefact.files.items():
                self.verify_file(directory, relative, expected, kind)

    def verify_files(self, directory: Path, kind: ArtefactKind) -> None:
        """Hash every file of every component's `kind` artefact against the manifest; refuse any difference."""
        for component in self.present(COMPILED_COMPONENTS, kind):
            for relative, expected in self.artefact(directory, component, kind).files.items():
                self.verify_file(directory, relative, expected, kind)

    def verify_file(self, directory: Path, relative: str, expected: str, kind: ArtefactKind, actual: str | None = None) -> None:
        """Refuse a missing file or one whose SHA-256 (`actual`, or computed here) is not `expected`."""
        path = directory / relative
        hint = "; rebuild with " + self.rebuild_command(directory, kind)
        if actual is None:
            if not path.is_file():
                raise ManifestError(f"{path} is listed in {MANIFEST_NAME} but missing{hint}")
            actual = remembered_sha256(path, directory / VERIFIED_HASHES)
        if actual != expected:
            raise ManifestError(f"{path} does not match {MANIFEST_NAME} (SHA-256 {actual}, expected {expected}): refused{hint}")
