"""Shared fixtures: the tiny model saved once per session, one running tiny service, tiny ONNX engines."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import ServiceProcess, run_build_engines, running_service


@pytest.fixture(scope="session")
def presets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny preset is built and saved (once per test session)."""
    from engines.models.presets import ensure_tiny_directory

    directory = tmp_path_factory.mktemp("presets")
    ensure_tiny_directory(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_service(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> Iterator[ServiceProcess]:
    """One `python -m service --model tiny` for the HTTP tests of a session."""
    with running_service(
        [
            "--model", "tiny",
            # fp32: at the tiny model's widths, oneDNN's bf16 kernels are several times slower than fp32
            # (tests elsewhere run the bf16 default); the contract under test does not depend on it.
            "--precision", "fp32",
            "--presets-dir", str(presets_dir),
            "--cache-dir", str(tmp_path_factory.mktemp("image-cache")),
        ]
    ) as service:
        yield service


@pytest.fixture
def make_client(aiohttp_client, tmp_path: Path):
    """An in-process app over a given engine (see tests/engines.py), ready to serve."""
    import asyncio

    from service.app import create_app
    from service.cache import ImageCache
    from service.settings import Settings

    made = []

    async def make(engine, api_keys=None, **settings_overrides):
        # The first app's cache is tmp_path/"cache"; later ones in the same test get their own.
        cache_dir = tmp_path / ("cache" if not made else f"cache-{len(made)}")
        made.append(engine)
        settings = Settings(**{"model": "test", "cache_dir": cache_dir, **settings_overrides})
        app = create_app(settings, engine, ImageCache(settings.cache_dir, settings.cache_size), api_keys)
        client = await aiohttp_client(app)
        for _ in range(3000):  # up to a minute: an engine that runs real graphs (the TensorRT stand-in) warms up in seconds
            if (await client.get("/readyz")).status == 200:
                return client
            await asyncio.sleep(0.02)
        raise TimeoutError("the in-process app never became ready")

    return make


@pytest.fixture(scope="session")
def onnx_engines(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> Path:
    """`build_engines.py --model tiny --onnx-only` once per session; tests that change files copy it first."""
    out = tmp_path_factory.mktemp("engines")
    result = run_build_engines(["--model", "tiny", "--out", str(out), "--onnx-only", "--presets-dir", str(presets_dir)])
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def openvino_engines(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> Path:
    """`build_engines.py --model tiny --target cpu` once per session; tests that change files copy it first."""
    out = tmp_path_factory.mktemp("openvino-engines")
    result = run_build_engines(["--model", "tiny", "--out", str(out), "--target", "cpu", "--presets-dir", str(presets_dir)])
    assert result.returncode == 0, result.stderr
    return out
