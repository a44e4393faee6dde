"""The container's entrypoint, run outside Docker: its jobs, the arguments they get, the healthcheck."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import EXAMPLE_PROMPT, REPO, ServiceProcess, free_port, generate

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def job_env(**variables: str) -> dict[str, str]:
    """The test's environment, without SDXL_* settings from outside, and this venv's `python` first on PATH
    (the image puts its venv there the same way)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDXL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **variables}


def run_job(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENTRYPOINT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def fake_python(tmp_path: Path) -> Path:
    """A `python` that prints its arguments, one a line: what each job would run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    "args, variables, expected",
    [
        ([], {}, ["-m", "service"]),
        (["serve", "--model", "tiny"], {}, ["-m", "service", "--model", "tiny"]),
        (["--port", "8000"], {}, ["-m", "service", "--port", "8000"]),
        # build-engines builds for the model and directory that serve reads from the same variables ...
        (
            ["build-engines", "--onnx-only"],
            {"SDXL_MODEL": "tiny", "SDXL_ENGINE_DIR": "/data/engines"},
            ["-m", "build_engines", "--model", "tiny", "--out", "/data/engines", "--onnx-only"],
        ),
        # ... unless its own flags say otherwise.
        (
            ["build-engines", "--model=other", "--out", "/x"],
            {"SDXL_MODEL": "tiny", "SDXL_ENGINE_DIR": "/data/engines"},
            ["-m", "build_engines", "--model=other", "--out", "/x"],
        ),
        (["build-engines", "--help"], {}, ["-m", "build_engines", "--help"]),
        (["python", "-V"], {}, ["-V"]),
    ],
)
def test_jobs_run_python_with_these_arguments(
    fake_python: Path, args: list[str], variables: dict[str, str], expected: list[str]
) -> None:
    env = job_env(**variables)
    env["PATH"] = f"{fake_python}{os.pathsep}{env['PATH']}"
    result = run_job(args, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_help_lists_the_jobs() -> None:
    result = run_job(["help"], job_env())
    assert result.returncode == 0
    assert all(job in result.stdout for job in ("serve", "build-engines", "healthcheck"))


@pytest.mark.slow
def test_serve_job_answers_the_original_example_and_its_healthcheck_passes(
    tmp_path: Path, presets_dir: Path
) -> None:
    # Settings from variables, as the image sets them; ServiceProcess adds --host/--port flags.
    # DEBUG: probes are logged only at DEBUG, and the log shows the healthcheck's probe arriving.
    env = job_env(SDXL_MODEL="tiny", SDXL_PRESETS_DIR=str(presets_dir), SDXL_CACHE_DIR=str(tmp_path / "cache"), SDXL_LOG_LEVEL="DEBUG")
    service = ServiceProcess([], env=env, command=[str(ENTRYPOINT), "serve"])
    try:
        service.wait_ready()
        reply = generate(service.base_url, {"prompt": EXAMPLE_PROMPT})
        assert reply.status == 200, reply.body[:500]
        assert reply.headers["content-type"] == "image/png"
        assert reply.image().size == (512, 512)
        assert reply.headers["x-engine"].startswith("torch-")

        check = run_job(["healthcheck"], job_env(SDXL_HOST="0.0.0.0", SDXL_PORT=str(service.port)))
        assert check.returncode == 0, check.stderr
        assert '"path": "/healthz", "status": 200' in service.log()
    finally:
        code = service.stop()
    # 0 after SIGTERM: the job exec'd Python, so the signal reached it and it drained.
    assert code == 0, service.log()


def test_healthcheck_fails_when_nothing_answers() -> None:
    port = free_port()
    result = run_job(["healthcheck"], job_env(SDXL_PORT=str(port)))
    assert result.returncode != 0
    assert f"healthcheck: http://127.0.0.1:{port}/healthz" in result.stderr


@pytest.mark.slow
def test_build_engines_job_writes_onnx_and_a_manifest(tmp_path: Path, presets_dir: Path) -> None:
    from engines.models.presets import tiny_fingerprint

    engine_dir = tmp_path / "engines"
    env = job_env(
        SDXL_MODEL="tiny",
        SDXL_ENGINE_DIR=str(engine_dir),
        SDXL_PRESETS_DIR=str(presets_dir),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),  # where the tiny preset goes if the build ignores the above
    )
    result = run_job(["build-engines", "--onnx-only"], env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert manifest["model"] == {"source": "tiny", "fingerprint": tiny_fingerprint()}
    assert list(engine_dir.rglob("*.onnx")), sorted(p.name for p in engine_dir.rglob("*"))
