"""OpenVINO: the IR of `build_engines.py --target cpu` (both CLIP text encoders, the UNet, the VAE
decoder, and encoder for image-to-image) as the loop's runners.

The CPU path at the silicon's limit: OpenVINO compiles the graphs for this processor, in bf16 where
it has native bf16 (AVX-512 BF16, AMX), else f32; with --precision int8 (opt-in), the NNCF-quantized
UNet (and VAE decoder, where the build kept one) of `build_engines.py --target cpu --precision int8`.
A build from before the text encoders' IR serves with the encoders in torch (and says so in the log).

--static-sizes: the UNet and VAE decoder also compiled with static shapes for those sizes (about
10 % faster on AMX); a request item of another size runs the dynamic compile, compiled at the first
such item. Compiled models share no weights (each holds its own repacked copy: measured, see
docs/engines.md), so every static size costs one more copy of the UNet and VAE decoder.

Compiled models are cached (OpenVINO's CACHE_DIR, in the engine directory where it is writable): a
second start reads the compiled blob instead of compiling the IR again.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engines.backends.torch_runners import TINY_VAE_NO_IMAGE_TO_IMAGE, TorchVAEDecoder, load_text_side, per_item
from engines.base import EngineLimits, EngineUnavailable, GenerationRequest
from engines.core.engine import PipelineEngine
from engines.core.hardware import usable_cpu_count
from engines.core.modules import VAEDecoderModule
from engines.core.numerics import choose_numerics, openvino_float_hint, openvino_name, openvino_precision
from engines.core.pipeline import SDXLTurboPipeline
from engines.core.resident import releasing_mapped_pages
from engines.core.specs import TEXT_COMPONENTS, UNET, VAE_DECODER, VAE_ENCODER, ComponentSpec, ModelDims, Shape, Size, trace_size
from engines.core.text_encoders import TextEncoders
from engines.manifest import Manifest

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install '.[openvino]'"
COMPILED_CACHE = "compiled-cache"  # under the engine directory: OpenVINO's blobs, keyed by IR, device and config
# Compiles with a CACHE_DIR in this process: read from a cached blob, or compiled (and the blob
# written). A second start should only read (tests/test_openvino.py).
COMPILES: Counter[str] = Counter()


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
    compiled = ov.Core().compile_model(str(path) if isinstance(path, Path) else path, "CPU", config)
    if cache_dir is not None:
        COMPILES["cached" if compiled.get_property("LOADED_FROM_CACHE") else "compiled"] += 1
    return compiled


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


def convert_module(module: torch.nn.Module, spec: ComponentSpec, dims: ModelDims, samples: dict[str, torch.Tensor] | None = None) -> Any:
    """A torch module with the spec's inputs -> an in-memory OpenVINO model with dynamic axes; traced
    on `samples`, else on the spec's sample inputs at the trace size.

    A 16-bit module is traced as it is, the way optimum-intel does: OpenVINO's patch keeps the
    Linear weights 16-bit (graph constants widened in the graph) and widens the rest in place, so
    no float32 copy of the whole module is made. It leaves the module patched: convert it last.
    """
    import openvino as ov

    if any(p.dtype in (torch.float16, torch.bfloat16) for p in module.parameters()):
        from openvino.frontend.pytorch.patch_model import __make_16bit_traceable as make_16bit_traceable

        make_16bit_traceable(module)
    if samples is None:
        samples = spec.sample_inputs(2, *trace_size(dims))
    shapes = [ov.PartialShape([-1 if isinstance(d, str) else d for d in t.shape]) for t in spec.inputs]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # diffusers branches on shapes in Python
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO's converter traces with torch.jit
        model = ov.convert_model(module, example_input=tuple(samples[name] for name in spec.input_names), input=shapes)
    for port, name in zip(model.outputs, spec.output_names):
        port.get_tensor().set_names({name})
    return model


class OpenVINORunner:
    """One component: float32 torch tensors in and out, one batch item at a time, each from the
    static compile of its shape where there is one, else from the dynamic compile.

    Item by item for the same reason as the torch CPU runners (`per_item`): a request's bytes must not
    depend on its batch-mates, and a CPU gains nothing from a batch.
    """

    def __init__(
        self, compiled: Any, spec: ComponentSpec, static: dict[Shape, Any] | None = None, compile_dynamic: Callable[[], Any] | None = None
    ) -> None:
        """`compiled`: the dynamic-shape compile; or None, and `compile_dynamic` makes it at the first
        item that no static compile takes (a service that serves its static sizes only holds no
        dynamic copy). `static`: the first input's shape (batch 1) -> its static compile."""
        self.spec = spec
        self._compile_dynamic = compile_dynamic
        self._dynamic_request = None if compiled is None else compiled.create_infer_request()
        self._static = {shape: model.create_infer_request() for shape, model in (static or {}).items()}
        self.runs: Counter[str] = Counter()  # "static" / "dynamic": items run by each (tests, metrics)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.spec.inputs):
            raise TypeError(f"{self.spec.name} takes {len(self.spec.inputs)} tensors, got {len(inputs)}")
        return per_item(self._run, *inputs)

    def _request(self, shape: Shape) -> Any:
        static = self._static.get(shape)
        self.runs["dynamic" if static is None else "static"] += 1
        if static is not None:
            return static
        if self._dynamic_request is None:
            assert self._compile_dynamic is not None
            logger.info("%s: compiling the dynamic-shape model for the first item of shape %s", self.spec.name, shape)
            self._dynamic_request = self._compile_dynamic().create_infer_request()
        return self._dynamic_request

    def _run(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = [np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy()) for t in inputs]
        output = self._request(tuple(inputs[0].shape)).infer(feeds)[0]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))


def compile_runner(source: Path | Any, spec: ComponentSpec, hint: str, cache_dir: Path | None, static_sizes: Sequence[Size] = ()) -> OpenVINORunner:
    """A runner for an IR file (or an in-memory model): its dynamic compile, and a static compile
    for each of `static_sizes` (batch 1: runners go item by item), each reshaped from one read model."""
    static: dict[Shape, Any] = {}
    if static_sizes:
        import openvino as ov

        model = ov.Core().read_model(str(source)) if isinstance(source, Path) else source
        for width, height in static_sizes:
            shapes = spec.shapes(1, width, height)
            copy = model.clone()
            copy.reshape({name: shapes[name] for name in spec.input_names})
            static[shapes[spec.input_names[0]]] = compile_for_cpu(copy, hint, cache_dir)
    def dynamic() -> Any:
        return compile_for_cpu(source, hint, cache_dir)

    return OpenVINORunner(None, spec, static, dynamic) if static else OpenVINORunner(dynamic(), spec)


class OpenVINOTextEncoders(TextEncoders):
    """Both CLIP encoders from their IR (the tokenizers stay in Python), one prompt at a time."""

    def __init__(self, tokenizers: tuple[Any, Any], compiled: Any, compiled_2: Any) -> None:
        super().__init__(*tokenizers, split_batch=True)
        self._requests = (compiled.create_infer_request(), compiled_2.create_infer_request())

    def _run(self, ids: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (hidden,) = self._infer(0, ids)
        hidden_2, pooled = self._infer(1, ids_2)
        return hidden, hidden_2, pooled

    def _infer(self, index: int, ids: torch.Tensor) -> list[torch.Tensor]:
        outputs = self._requests[index].infer([ids.numpy().astype(np.int64)])
        return [torch.from_numpy(np.array(outputs[i], dtype=np.float32, copy=True)) for i in range(len(outputs))]


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
        static_sizes: Sequence[Size] | None = None,
    ) -> None:
        """`static_sizes`: None, the base size (the warm-up's); () none."""
        self.model, self.engine_dir, self.manifest, self.presets_dir = model, engine_dir, manifest, presets_dir
        self.vae, self.revision = vae, revision
        self.precision = openvino_precision(precision)
        self.hint = openvino_float_hint(self.precision)  # what the float layers compute in
        # Without text encoder IR (a build from before it): the encoders in torch, with the same arithmetic.
        self.numerics = choose_numerics("cpu", "bf16" if self.hint == "bf16" else "fp32")
        self.text_weights = manifest.openvino_text_weights()
        missing = TINY_VAE_NO_IMAGE_TO_IMAGE if vae == "tiny" else manifest.image_to_image_missing(engine_dir, "openvino")
        limits = EngineLimits(size_multiple=manifest.dims.size_multiple, image_to_image=not missing, image_to_image_reason=missing)
        super().__init__("", limits)  # named below, once the static sizes (part of the name) are known
        self.static_sizes = (self.warm_up_size,) if static_sizes is None else tuple(static_sizes)
        outside = [f"{w}x{h}" for w, h in self.static_sizes if not limits.supports(w, h)]
        if outside:
            raise EngineUnavailable(
                f"--static-sizes: {', '.join(outside)} outside what this engine serves ({limits.describe_sizes()})"
            )
        self.info.name = openvino_name(self.precision, vae == "tiny", self.text_weights, self.static_sizes)

    def load(self) -> None:
        # Compiling (or finding a cached blob for) a model read from the IR touches every mapped weight
        # page: release them as it goes, or they all count in the peak beside the compiled copies.
        with releasing_mapped_pages(self.engine_dir):
            self._load()

    def _load(self) -> None:
        text_ir = self.text_weights is not None
        if not text_ir:
            logger.warning(
                "the build in %s holds no text encoder IR: the text encoders run in torch; rebuild with %s to run them in OpenVINO",
                self.engine_dir, self.manifest.rebuild_command(self.engine_dir, "openvino"),
            )
        side = load_text_side(self.model, self.numerics, self.presets_dir, self.vae, self.revision, text_encoders=not text_ir)
        int8 = self.precision == "int8"
        self.manifest.check_model(self.engine_dir, self.model, side.fingerprint, "openvino_int8" if int8 else "openvino")
        artefacts = self.manifest.openvino_artefacts(self.engine_dir, int8)
        specs = self.manifest.dims.specs()
        cache_dir = writable_cache_dir(self.engine_dir, self.hint)

        def ir(name: str) -> Path:
            return self.engine_dir / artefacts[name][1].path

        def runner(name: str, static_sizes: Sequence[Size] = ()) -> OpenVINORunner:
            return compile_runner(ir(name), specs[name], self.hint, cache_dir, static_sizes)

        text_encoders = side.text_encoders
        if text_ir:
            text_encoders = OpenVINOTextEncoders(side.tokenizers, *(compile_for_cpu(ir(name), self.hint, cache_dir) for name in TEXT_COMPONENTS))
        vae_decoder = runner(VAE_DECODER, self.static_sizes) if side.tiny_vae is None else self._compile_tiny_vae(side.tiny_vae, specs)
        vae_encoder = runner(VAE_ENCODER) if self.limits.image_to_image else None
        self._pipeline = SDXLTurboPipeline(text_encoders, runner(UNET, self.static_sizes), vae_decoder, side.config, "cpu", vae_encoder)
        self.info.model_fingerprint = side.fingerprint
        static = ", ".join(f"{w}x{h}" for w, h in self.static_sizes) or "none"
        logger.info("loaded OpenVINO IR from %s (%s; static sizes: %s)", self.engine_dir, self.info.name, static)

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
        return compile_runner(model, specs[VAE_DECODER], self.hint, None, self.static_sizes)
