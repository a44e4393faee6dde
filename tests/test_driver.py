"""engines.core.driver: a driver too old for CUDA 13 is named in one line, before anything GPU is installed.
No nvidia-smi here: versions are passed in, and the command line runs against a fake nvidia-smi
that is found through the real PATH lookup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.core.driver import MIN_DRIVER, driver_problem, nvidia_driver_version
from tests.helpers import REPO


def test_minimum_is_the_cuda_13_driver() -> None:
    assert MIN_DRIVER == 580


@pytest.mark.parametrize("version", ["550.54.15", "535.183.01", "575.57.08", "470.256.02"])
def test_a_driver_older_than_580_is_one_line_naming_both(version: str) -> None:
    problem = driver_problem(version)
    assert problem is not None and "\n" not in problem
    assert version in problem and "580" in problem


@pytest.mark.parametrize("version", ["580.65.06", "580.82.07", "590.44.01", "600.1"])
def test_a_driver_of_580_or_newer_is_fine(version: str) -> None:
    assert driver_problem(version) is None


@pytest.mark.parametrize("version", [None, "", "N/A", "[Not Supported]"])
def test_no_driver_or_an_unreadable_version_is_not_a_problem(version: str | None) -> None:
    assert driver_problem(version) is None


def fake_nvidia_smi(directory: Path, script: str) -> dict[str, str]:
    """An environment whose PATH finds `directory/nvidia-smi` (running `script`) before anything else."""
    directory.mkdir(exist_ok=True)
    tool = directory / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engines.core.driver"],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
    )


def test_command_line_stops_on_an_old_driver(tmp_path: Path) -> None:
    result = run_check(fake_nvidia_smi(tmp_path / "bin", 'echo "550.54.15"'))
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1 and "550.54.15" in lines[0] and "580" in lines[0], lines


def test_command_line_passes_a_new_driver_silently(tmp_path: Path) -> None:
    # Two GPUs: nvidia-smi prints one line each.
    result = run_check(fake_nvidia_smi(tmp_path / "bin", 'printf "580.65.06\\n580.65.06\\n"'))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_command_line_says_nothing_without_an_nvidia_driver(tmp_path: Path) -> None:
    # nvidia-smi present but failing, as it does when the driver is not loaded.
    failing = run_check(fake_nvidia_smi(tmp_path / "bin", 'echo "NVIDIA-SMI has failed" >&2; exit 9'))
    assert (failing.returncode, failing.stdout, failing.stderr) == (0, "", "")
    # No nvidia-smi at all: a PATH with only an empty directory.
    empty = tmp_path / "empty"
    empty.mkdir()
    absent = run_check({**os.environ, "PATH": str(empty)})
    assert (absent.returncode, absent.stdout, absent.stderr) == (0, "", "")


def test_version_comes_from_the_nvidia_smi_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = fake_nvidia_smi(tmp_path / "bin", 'echo " 575.51.03 "')
    monkeypatch.setenv("PATH", env["PATH"])
    assert nvidia_driver_version() == "575.51.03"
    assert driver_problem() is not None and "575.51.03" in driver_problem()  # the default asks nvidia-smi


def test_a_hanging_nvidia_smi_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", "exec sleep 30")["PATH"])
    assert nvidia_driver_version(timeout=0.5) is None


def test_the_check_imports_nothing_heavy() -> None:
    # It runs before the GPU environment exists: standard library only.
    code = "import sys, engines.core.driver; print(sorted(m for m in ('torch', 'numpy', 'tensorrt') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip() == "[]"
