"""Test helpers: start the real service as a subprocess and talk HTTP to it."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

# The launcher is shared with the benchmarks, so both start the service the same way.
from benchmarks.launcher import REPO, ServiceProcess, free_port, running_service  # noqa: F401 (re-exported for tests)

EXAMPLE_PROMPT = "A cinematic shot a 3 maneki neko in South America."


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def image(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.body))
        image.load()
        return image


def request(
    base_url: str,
    method: str,
    path: str,
    json_body: Any = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> Reply:
    host, port = base_url.removeprefix("http://").split(":")
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def generate(base_url: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    return request(base_url, "POST", "/generate-image", json_body=payload, headers=headers)


def replica_args(presets_dir: Path, cache_dir: Path, cache_url: str, *extra: str) -> list[str]:
    """A tiny-model replica with its own disk tier, sharing the Redis at `cache_url` with its peers."""
    return ["--model", "tiny", "--precision", "fp32", "--presets-dir", str(presets_dir), "--cache-dir", str(cache_dir),
            "--cache-url", cache_url, *extra]


def engine_calls(service: ServiceProcess) -> float:
    """How many batches the service's engine has run, from its /metrics."""
    return metric(request(service.base_url, "GET", "/metrics").body.decode(), "sdxl_batch_size_count")


def run_build_engines(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python build_engines.py ARGS` as a user would run it; output captured as text."""
    return subprocess.run(
        [sys.executable, "build_engines.py", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_quick_benchmark(out: Path, presets_dir: Path, *args: str) -> dict[str, Path]:
    """`python -m benchmarks --quick ARGS` into `out`; its .json, .md and .png by suffix."""
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--presets-dir", str(presets_dir), *args]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    files = {path.suffix: path for path in out.iterdir()}
    assert set(files) == {".json", ".md", ".png"}, sorted(out.iterdir())
    assert all(path.stem.endswith("-quick") for path in files.values())
    return files


FAKE_GPU = ("NVIDIA H100 80GB HBM3", "9.0")
FAKE_TENSORRT = "11.4.0.106"


def write_fake_engines(directory: Path, model: str = "tiny", with_plans: bool = True) -> Any:
    """An engine directory as build_engines.py leaves it, with stand-in bytes for the ONNX graphs and
    plans (for tests of the manifest and of --engine selection, which never run them)."""
    from engines.core.specs import COMPILED_COMPONENTS, BuildRange, ModelDims
    from engines.core.hardware import GpuInfo
    from engines.core.files import file_sha256
    from engines.manifest import Artefact, ComponentEntry, Manifest
    from engines.models.presets import known_fingerprint

    manifest = Manifest(
        model=model,
        fingerprint=known_fingerprint(model) or "sha256:fake",
        dims=ModelDims(hidden_size=64, pooled_size=32, upsample_factor=2),
        build_range=BuildRange.for_sizes(((512, 512), (768, 768)), min_batch=1, max_batch=4),
        versions={"torch": "2.13.0", "diffusers": "0.42.1", "onnx": "1.23.2", "tensorrt": FAKE_TENSORRT if with_plans else None},
        gpu=GpuInfo(*FAKE_GPU) if with_plans else None,
    )
    for name in COMPILED_COMPONENTS:
        (directory / name).mkdir(parents=True, exist_ok=True)
        files = {f"{name}/model.onnx": b"graph of " + name.encode()}
        if with_plans:
            files[f"{name}.plan"] = b"plan of " + name.encode()
        for relative, data in files.items():
            (directory / relative).write_bytes(data)
        hashes = {relative: file_sha256(directory / relative) for relative in files}

        def artefact(relative: str, **details: Any) -> Artefact:
            return Artefact(relative, {relative: hashes[relative]}, key=f"key of {relative}", details=details)

        read_back = ("fp16", "HALF") if name == "unet" else ("tf32", "FLOAT")
        plan = artefact(f"{name}.plan", precision=read_back[0], io_dtypes={"x": read_back[1]}) if with_plans else None
        manifest.components[name] = ComponentEntry(artefact(f"{name}/model.onnx"), plan)
    manifest.write(directory)
    return manifest


def pixel_difference(image: Any, reference: Any) -> tuple[int, float]:
    """(max, mean) absolute difference of two uint8 images, for comparing numerics that differ on purpose."""
    import numpy as np

    difference = np.abs(np.asarray(image).astype(np.int16) - np.asarray(reference).astype(np.int16))
    return int(difference.max()), float(difference.mean())


def gpu_cases() -> list[Any]:
    """What both gpu tiers compare against float32 PyTorch on the same GPU: 1, 2 and 4 steps (the
    timestep is a view into the schedule), guidance with a negative prompt, non-square sizes."""
    from engines.base import GenerationRequest

    return [
        GenerationRequest(prompt=EXAMPLE_PROMPT, seed=1),
        GenerationRequest(prompt=EXAMPLE_PROMPT, seed=2, num_inference_steps=2),
        GenerationRequest(prompt=EXAMPLE_PROMPT, seed=3, num_inference_steps=4),
        GenerationRequest(prompt=EXAMPLE_PROMPT, negative_prompt="blurry", seed=4, guidance_scale=3.0, width=768, height=512),
        GenerationRequest(prompt="a lighthouse at dusk", seed=5, width=768, height=512),
    ]


def case_id(request: Any) -> str:
    return f"{request.num_inference_steps}step-cfg{request.guidance_scale}-{request.width}x{request.height}"


@contextlib.contextmanager
def loaded(*engines: Any) -> Iterator[None]:
    """Engines loaded for a block, closed after it."""
    for engine in engines:
        engine.load()
    try:
        yield
    finally:
        for engine in engines:
            engine.close()


def assert_same_picture(engine: Any, reference: Any, generation: Any, label: str) -> None:
    """`engine` makes what float32 `reference` makes for `generation`, within what its numerics allow."""
    (image,) = engine.generate([generation])
    (expected,) = reference.generate([generation])
    assert image.shape == (generation.height, generation.width, 3)
    assert image.std() > 0, "a flat image: the decode overflowed or went wrong"
    largest, mean = pixel_difference(image, expected)
    print(f"{label} against float32 PyTorch on the same GPU: max {largest}, mean {mean:.3f}")
    assert mean < 4


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in the Prometheus text; a missing series fails the test (it is not 0)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = r"^" + re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no series {name}{{{label_text}}} in /metrics:\n{text}"
    return float(match.group(1))
