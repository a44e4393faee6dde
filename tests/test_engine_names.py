"""Engine names and cache keys are pinned: a rename silently empties every cache, so it must fail here first."""

from __future__ import annotations

import pytest
import torch

from engines.backends.torch_engine import TorchEngine
from engines.core.numerics import TorchNumerics, onnxruntime_name, openvino_name, tensorrt_name
from tests.helpers import EXAMPLE_PROMPT, generate

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("numerics", "tiny_vae", "name"),
    [
        (TorchNumerics(CPU, torch.float32, torch.float32), False, "torch-cpu-fp32"),
        (TorchNumerics(CPU, torch.bfloat16, torch.bfloat16), False, "torch-cpu-bf16"),
        (TorchNumerics(CPU, torch.bfloat16, torch.bfloat16), True, "torch-cpu-bf16-taesd"),
        (TorchNumerics(CUDA, torch.float16, torch.bfloat16), False, "torch-cuda-fp16-vae-bf16"),
        (TorchNumerics(CUDA, torch.float16, torch.float32), False, "torch-cuda-fp16-vae-fp32"),
        (TorchNumerics(CUDA, torch.float16, torch.bfloat16), True, "torch-cuda-fp16-taesd"),
    ],
)
def test_torch_names(numerics: TorchNumerics, tiny_vae: bool, name: str) -> None:
    assert numerics.name(tiny_vae) == name


def test_compiled_backend_names() -> None:
    assert onnxruntime_name(on_cuda=False, text_precision="fp32") == "onnxruntime-cpu-fp32"
    assert onnxruntime_name(on_cuda=False, text_precision="bf16") == "onnxruntime-cpu-fp32-text-bf16"
    assert onnxruntime_name(on_cuda=True, text_precision="fp16") == "onnxruntime-cuda-fp32-text-fp16"
    assert openvino_name("bf16") == "openvino-cpu-bf16"
    assert openvino_name("f32", tiny_vae=True) == "openvino-cpu-f32-taesd"


@pytest.mark.parametrize(
    ("text_weights", "static_sizes", "name"),
    [
        ("fp16", (), "openvino-cpu-bf16-text-ov"),
        ("int8", ((512, 512),), "openvino-cpu-bf16-text-ov-int8-static-512x512"),
        ("int8-fp16", ((768, 512), (512, 512)), "openvino-cpu-bf16-text-ov-int8-fp16-static-512x512-768x512"),
        (None, ((512, 512),), "openvino-cpu-bf16-static-512x512"),
    ],
)
def test_openvino_names_say_where_the_text_encoders_ran_and_which_sizes_are_static(text_weights, static_sizes, name) -> None:
    """The text encoders from IR (float or int8 weights) and the static compiles each make other bytes."""
    assert openvino_name("bf16", text_weights=text_weights, static_sizes=static_sizes) == name


@pytest.mark.parametrize(("native_bf16", "name"), [(False, "openvino-cpu-int8"), (True, "openvino-cpu-int8-bf16")])
def test_int8_names_say_int8_and_what_the_float_layers_compute_in(monkeypatch, native_bf16: bool, name: str) -> None:
    from engines.core import numerics

    monkeypatch.setattr(numerics, "cpu_has_bf16", lambda: native_bf16)
    assert openvino_name("int8") == name
    assert tensorrt_name("fp16", "tf32") == "tensorrt-fp16-vae-tf32"
    assert tensorrt_name("bf16", "tf32") == "tensorrt-bf16-vae-tf32"


def test_an_engine_takes_its_name_from_the_one_function(presets_dir) -> None:
    assert TorchEngine("tiny", "cpu", "fp32", presets_dir).info.name == "torch-cpu-fp32"
    assert TorchEngine("tiny", "cpu", "fp32", presets_dir, vae="tiny").info.name == "torch-cpu-fp32-taesd"


def test_a_known_request_keeps_its_cache_key(tiny_service) -> None:
    """Model fingerprint, engine name, canonical request, derived seed and hashing, end to end."""
    reply = generate(tiny_service.base_url, {"prompt": EXAMPLE_PROMPT})
    assert reply.status == 200
    assert reply.headers["x-engine"] == "torch-cpu-fp32"
    assert reply.headers["x-seed"] == "1891660893"
    assert reply.headers["etag"] == '"da873f671d33cd3a3486f7a63ec29da1c567ff145145d0ab0f29147970f86709"'
