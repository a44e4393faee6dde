"""ONNX Runtime: the exported UNet and VAE decoder (and encoder, for image-to-image) as the loop's runners (CUDA execution provider where
present, the CPU otherwise); the text encoders stay in PyTorch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from engines.backends.torch_runners import load_text_side, per_item
from engines.base import EngineLimits
from engines.core.engine import PipelineEngine
from engines.core.hardware import usable_cpu_count
from engines.core.numerics import choose_numerics, onnxruntime_name, onnxruntime_text_precision
from engines.core.pipeline import SDXLTurboPipeline
from engines.core.specs import COMPILED_COMPONENTS, UNET, VAE_DECODER, VAE_ENCODER, ComponentSpec
from engines.manifest import Manifest

logger = logging.getLogger(__name__)

CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def onnxruntime_session(path: Path, providers: list[str] | None = None, threads: int = 0) -> Any:
    """An ONNX Runtime session with warnings kept out of the log (ORT prints to stderr otherwise)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or [CPU_PROVIDER])


class OnnxRuntimeRunner:
    """One exported component as a loop runner: float32 torch tensors in and out, on `device`."""

    def __init__(self, session: Any, spec: ComponentSpec, device: torch.device, split_batch: bool) -> None:
        self.session, self.spec, self.device, self.split_batch = session, spec, device, split_batch

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.spec.inputs):
            raise TypeError(f"{self.spec.name} takes {len(self.spec.inputs)} tensors, got {len(inputs)}")
        return per_item(self._run, *inputs) if self.split_batch else self._run(*inputs)

    def _run(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {
            name: tensor.detach().to("cpu", torch.float32).contiguous().numpy()
            for name, tensor in zip(self.spec.input_names, inputs)
        }
        (output,) = self.session.run(self.spec.output_names[:1], feeds)
        return torch.from_numpy(output).to(self.device)


class OnnxRuntimeEngine(PipelineEngine):
    """SDXL Turbo with the float32 ONNX graphs that build_engines.py exported."""

    def __init__(
        self,
        model: str,
        engine_dir: Path,
        manifest: Manifest,
        device: str = "auto",
        precision: str = "auto",
        presets_dir: Path | None = None,
        revision: str | None = None,
    ) -> None:
        self.model, self.engine_dir, self.manifest, self.presets_dir = model, engine_dir, manifest, presets_dir
        self.revision = revision
        on_cuda = device != "cpu" and CUDA_PROVIDER in available_providers() and torch.cuda.is_available()
        self.providers = [CUDA_PROVIDER, CPU_PROVIDER] if on_cuda else [CPU_PROVIDER]
        text_precision = onnxruntime_text_precision(precision, on_cuda)
        self.numerics = choose_numerics("cuda" if on_cuda else "cpu", text_precision)
        # Dynamic axes: any size the traced UNet can take, with the default range and batch.
        missing = manifest.image_to_image_missing(engine_dir, "onnx")
        limits = EngineLimits(size_multiple=manifest.dims.size_multiple, image_to_image=not missing, image_to_image_reason=missing)
        super().__init__(onnxruntime_name(on_cuda, text_precision), limits)

    def load(self) -> None:
        side = load_text_side(self.model, self.numerics, self.presets_dir, revision=self.revision)
        self.manifest.check_model(self.engine_dir, self.model, side.fingerprint, "onnx")
        specs = self.manifest.dims.specs()
        threads = usable_cpu_count()
        runners = {}
        for name in self.manifest.present(COMPILED_COMPONENTS, "onnx"):
            path = self.engine_dir / self.manifest.artefact(self.engine_dir, name, "onnx").path
            session = onnxruntime_session(path, self.providers, threads)
            runners[name] = OnnxRuntimeRunner(session, specs[name], self.numerics.device, self.numerics.splits_batches)
        self._pipeline = SDXLTurboPipeline(
            side.text_encoders, runners[UNET], runners[VAE_DECODER], side.config, self.numerics.device,
            vae_encoder=runners.get(VAE_ENCODER),
        )
        self.info.model_fingerprint = side.fingerprint
        logger.info("loaded ONNX graphs from %s with %s (%s)", self.engine_dir, ", ".join(self.providers), self.info.name)
