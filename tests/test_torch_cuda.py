"""The gpu tier, PyTorch part: the fallback path on a CUDA GPU, against float32 on the same GPU.

Needs only torch with CUDA and the project's pure-Python dependencies (no TensorRT, no network):
`make gpu-check-torch` runs it on a bare GPU machine. It proves: fp16 UNet with the VAE kept out of
fp16, 1/2/4 steps, guidance, non-square sizes, batches on the GPU, and the service over HTTP.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from engines.backends.torch_engine import TorchEngine
from engines.base import GenerationRequest
from tests.helpers import (
    EXAMPLE_PROMPT,
    ServiceProcess,
    assert_same_picture,
    case_id,
    generate,
    gpu_cases,
    loaded,
    pixel_difference,
    request,
    running_service,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check-torch)"),
]

@pytest.fixture(scope="module")
def engines(presets_dir: Path) -> Iterator[tuple[TorchEngine, TorchEngine]]:
    """The default CUDA engine (fp16) and a float32 reference on the same GPU."""
    fast = TorchEngine("tiny", device="cuda", presets_dir=presets_dir)
    reference = TorchEngine("tiny", device="cuda", precision="fp32", presets_dir=presets_dir)
    with loaded(fast, reference):
        yield fast, reference


def test_the_default_is_fp16_with_the_vae_out_of_fp16(engines) -> None:
    fast, _ = engines
    assert fast.numerics.dtype == torch.float16
    assert fast.numerics.vae_dtype in (torch.bfloat16, torch.float32)
    assert fast.info.name in ("torch-cuda-fp16-vae-bf16", "torch-cuda-fp16-vae-fp32")


@pytest.mark.parametrize("generation", gpu_cases(), ids=case_id)
def test_fp16_makes_the_float32_picture(engines, generation: GenerationRequest) -> None:
    fast, reference = engines
    assert_same_picture(fast, reference, generation, f"PyTorch fp16 on {torch.cuda.get_device_name(0)}")


def test_a_batch_on_the_gpu_gives_each_request_its_own_picture(engines) -> None:
    fast, _ = engines
    pair = [GenerationRequest(prompt=EXAMPLE_PROMPT, seed=s) for s in (11, 12)]
    batched = fast.generate(pair)
    alone = [fast.generate([r])[0] for r in pair]
    assert not np.array_equal(batched[0], batched[1])
    for together, single in zip(batched, alone):
        assert pixel_difference(together, single)[1] < 1  # GPU kernels may differ in the last bits by batch size


@pytest.fixture(scope="module")
def cuda_service(presets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(
        [
            "--model", "tiny",
            "--engine", "torch",
            "--device", "cuda",
            "--presets-dir", str(presets_dir),
            "--max-batch", "4",
            "--batch-window-ms", "50",
            "--cache-dir", str(tmp_path_factory.mktemp("cuda-image-cache")),
        ]
    ) as service:
        yield service


def test_the_service_serves_from_the_gpu_and_batches(cuda_service: ServiceProcess) -> None:
    ready = request(cuda_service.base_url, "GET", "/readyz").json()
    assert ready["engine"].startswith("torch-cuda-fp16")
    payloads = [{"prompt": f"{EXAMPLE_PROMPT} {i}", "seed": i} for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda p: generate(cuda_service.base_url, p), payloads))
    assert [r.status for r in replies] == [200] * 4
    assert all(r.headers["x-engine"] == ready["engine"] and r.image().size == (512, 512) for r in replies)
    metrics = dict(
        line.rsplit(" ", 1) for line in request(cuda_service.base_url, "GET", "/metrics").body.decode().splitlines()
        if line.startswith(("sdxl_batch_size_count", "sdxl_batch_size_sum"))
    )
    assert float(metrics["sdxl_batch_size_sum"]) == 4
    assert float(metrics["sdxl_batch_size_count"]) < 4, "four concurrent requests never shared a UNet batch"
