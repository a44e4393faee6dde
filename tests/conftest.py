"""Shared fixtures, each made once per session: the tiny model saved, one running tiny service, tiny
ONNX and OpenVINO builds, one Redis with two replicas sharing it. A test that needs its own (other
flags, a process it kills) starts its own."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import REPO, ServiceProcess, replica_args, run_build_engines, run_quick_benchmark, running_service


# Fixtures that start something of their own beyond the session's tiny service and builds (a service
# with other flags or another backend, an int8 build, a browser, a benchmark run): a test that uses
# one is marked `slow`, and `pytest -m "not slow"` leaves it out for a quick local loop. Tests that
# start such a process inline carry the mark themselves. CI (`make test`) runs everything.
SLOW_FIXTURES = frozenset({
    "keyed_service", "quick_run", "redis_replicas", "fleet", "onnx_service", "openvino_service", "int8_build",
    "int8_service", "tiny_vae_service", "browser", "openvino_quick_run",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator["RedisServer"]:
    """A real redis-server with deploy/compose.yaml's own flags (the load balancer's tests hold them to it)."""
    import yaml

    from benchmarks.redis_server import RedisServer

    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    with RedisServer(tmp_path_factory.mktemp("redis"), compose["services"]["redis"]["command"][1:]) as server:
        yield server


@pytest.fixture(scope="session")
def redis_replicas(shared_redis, presets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Two tiny-model replicas, each with its own disk tier, sharing `shared_redis` (tests use prompts of their own)."""
    with running_service(replica_args(presets_dir, tmp_path_factory.mktemp("replica-a"), shared_redis.url)) as a, \
         running_service(replica_args(presets_dir, tmp_path_factory.mktemp("replica-b"), shared_redis.url)) as b:
        yield a, b


@pytest.fixture(scope="session")
def openvino_quick_run(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path, openvino_engines: Path) -> dict[str, Path]:
    """`python -m benchmarks --quick` given the session's --target cpu build, once, for what a build
    changes in the benchmark: the components timed on its IR, the service and the scale table on its engine."""
    return run_quick_benchmark(tmp_path_factory.mktemp("bench-openvino"), presets_dir,
                               "--sections", "components,http,scale", "--engine-dir", str(openvino_engines))
