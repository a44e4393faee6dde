"""OpenVINO: the UNet and VAE decoder (and encoder, for image-to-image) IR from `build_engines.py --target cpu` as the loop's runners.

The CPU path at the silicon's limit: OpenVINO compiles the graphs for this processor, in bf16 where
it has native bf16 (AVX-512 BF16, AMX), else f32; with --precision int8 (opt-in), the NNCF-quantized
UNet (and VAE decoder, where the build kept one) of `build_engines.py --target cpu --precision int8`.
The text encoders stay in PyTorch (a few percent of an image).

Compiled models are cached (OpenVINO's CACHE_DIR, in the engine directory where it is writable): a
second start reads the compiled blob instead of compiling the IR again.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from engines.backends.torch_runners import TINY_VAE_NO_IMAGE_TO_IMAGE, TorchVAEDecoder, load_text_side, per_item
from engines.base import EngineLimits, GenerationRequest
from engines.core.engine import PipelineEngine
from engines.core.hardware import usable_cpu_count
from engines.core.modules import VAEDecoderModule
from engines.core.numerics import choose_numerics, openvino_float_hint, openvino_name, openvino_precision
from engines.core.pipeline import SDXLTurboPipeline
from engines.core.resident import releasing_mapped_pages
from engines.core.specs import UNET, VAE_DECODER, VAE_ENCODER, ComponentSpec, ModelDims, trace_size
from engines.manifest import Manifest

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install '.[openvino]'"
COMPILED_CACHE = "compiled-cache"  # under the engine directory: OpenVINO's blobs, keyed by IR, device and config


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.get_version())


def compile_for_cpu(path: Path | Any, precision: str, cache_dir: Path | None = None) -> Any:
    """Compile an IR file (or an in-memory model) for this CPU: latency first, every core we may use.

    `cache_dir`: OpenVINO's compiled-model cache; the first compile writes a blob there, later ones
    (the same IR, device and config) read it, which skips compiling.
    The weights file (model.bin, or the cached blob) is mapped, and the compiled model keeps it
    beside the f32/bf16 copy the plugin makes from it at the first inference: run inferences under
    `engines.core.resident.releasing_mapped_pages` so that only that copy stays resident. Read
    instead of mapped (ENABLE_MMAP off), the read copy is kept all the same, and cannot be released
    (benchmarks/openvino_memory.py measures the ways).
    """
    import openvino as ov

    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": usable_cpu_count(),
    }
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return ov.Core().compile_model(str(path) if isinstance(path, Path) else path, "CPU", config)


def writable_cache_dir(engine_dir: Path, hint: str) -> Path | None:
    """`engine_dir`/compiled-cache/`hint` where it can be made and written (a read-only image may
    not let it): None otherwise. One folder per precision hint: with OpenVINO 2026.4 a bf16 compile
    read an f32 compile's blob from a shared folder and computed NaN (tests/test_openvino.py)."""
    directory = engine_dir / COMPILED_CACHE / hint
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        logger.info("no compiled-model cache (%s): every start compiles the IR", exc)
        return None
    return directory


def convert_module(module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims) -> Any:
    """A torch module with the spec's (float32) inputs -> an in-memory OpenVINO model with dynamic axes.

    A 16-bit module is traced as it is, the way optimum-intel does: OpenVINO's patch keeps the
    Linear weights 16-bit (graph constants widened in the graph) and widens the rest in place, so
    no float32 copy of the whole module is made. It leaves the module patched: convert it last.
    """
    import openvino as ov

    if any(p.dtype in (torch.float16, torch.bfloat16) for p in module.parameters()):
        from openvino.frontend.pytorch.patch_model import __make_16bit_traceable as make_16bit_traceable

        make_16bit_traceable(module)
    width, height = trace_size(dims)
    samples = spec.sample_inputs(batch=2, width=width, height=height)
    shapes = [ov.PartialShape([-1 if isinstance(d, str) else d for d in t.shape]) for t in spec.inputs]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # diffusers branches on shapes in Python
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO's converter traces with torch.jit
        model = ov.convert_model(module, example_input=tuple(samples[name] for name in spec.input_names), input=shapes)
    for port, name in zip(model.outputs, spec.output_names):
        port.get_tensor().set_names({name})
    return model


class OpenVINORunner:
    """One compiled component: float32 torch tensors in and out, one batch item at a time.

    Item by item for the same reason as the torch CPU runners (`per_item`): a request's bytes must not
    depend on its batch-mates, and a CPU gains nothing from a batch.
    """

    def __init__(self, compiled: Any, spec: ComponentSpec) -> None:
        self.spec = spec
        self.request = compiled.create_infer_request()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.spec.inputs):
            raise TypeError(f"{self.spec.name} takes {len(self.spec.inputs)} tensors, got {len(inputs)}")
        return per_item(self._run, *inputs)

    def _run(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = [np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy()) for t in inputs]
        output = self.request.infer(feeds)[0]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))


class OpenVINOEngine(PipelineEngine):
    """SDXL Turbo with the OpenVINO IR that build_engines.py --target cpu converted."""

    def __init__(
        self,
        model: str,
        engine_dir: Path,
        manifest: Manifest,
        precision: str = "auto",
        presets_dir: Path | None = None,
        vae: str = "full",
        revision: str | None = None,
    ) -> None:
        self.model, self.engine_dir, self.manifest, self.presets_dir = model, engine_dir, manifest, presets_dir
        self.vae, self.revision = vae, revision
        self.precision = openvino_precision(precision)
        self.hint = openvino_float_hint(self.precision)  # what the float layers compute in
        # Text encoders in torch with the same arithmetic (bf16 or fp32) on the CPU.
        self.numerics = choose_numerics("cpu", "bf16" if self.hint == "bf16" else "fp32")
        missing = TINY_VAE_NO_IMAGE_TO_IMAGE if vae == "tiny" else manifest.image_to_image_missing(engine_dir, "openvino")
        limits = EngineLimits(size_multiple=manifest.dims.size_multiple, image_to_image=not missing, image_to_image_reason=missing)
        super().__init__(openvino_name(self.precision, tiny_vae=vae == "tiny"), limits)

    def load(self) -> None:
        side = load_text_side(self.model, self.numerics, self.presets_dir, self.vae, self.revision)
        int8 = self.precision == "int8"
        self.manifest.check_model(self.engine_dir, self.model, side.fingerprint, "openvino_int8" if int8 else "openvino")
        artefacts = self.manifest.openvino_artefacts(self.engine_dir, int8)
        specs = self.manifest.dims.specs()
        cache_dir = writable_cache_dir(self.engine_dir, self.hint)

        def compiled(name: str) -> OpenVINORunner:
            path = self.engine_dir / artefacts[name][1].path
            return OpenVINORunner(compile_for_cpu(path, self.hint, cache_dir), specs[name])

        vae_decoder = compiled(VAE_DECODER) if side.tiny_vae is None else self._compile_tiny_vae(side.tiny_vae, specs)
        vae_encoder = compiled(VAE_ENCODER) if self.limits.image_to_image else None
        self._pipeline = SDXLTurboPipeline(side.text_encoders, compiled(UNET), vae_decoder, side.config, "cpu", vae_encoder)
        self.info.model_fingerprint = side.fingerprint
        logger.info("loaded OpenVINO IR from %s (%s)", self.engine_dir, self.info.name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
        # Weights are repacked from the mapped IR (or cached blob) at the first inference of a
        # shape: keep only the repacked copy resident (engines/core/resident.py).
        with releasing_mapped_pages(self.engine_dir):
            return super().generate(requests)

    def _compile_tiny_vae(self, tiny_vae: TorchVAEDecoder, specs: dict[str, ComponentSpec]) -> OpenVINORunner:
        """--vae tiny: no build made it, so convert the tiny autoencoder here (seconds; it is 1 M
        parameters) and compile it like the rest: OpenVINO runs it about twice as fast as torch."""
        module = VAEDecoderModule(tiny_vae.vae.float()).eval()
        model = convert_module(module, specs[VAE_DECODER], self.manifest.dims)
        return OpenVINORunner(compile_for_cpu(model, self.hint), specs[VAE_DECODER])
