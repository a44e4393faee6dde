"""`make gpu-check`'s script on the CPU: its dry run lists every step and finds what each needs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_lists_every_step_and_finds_what_they_need() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    steps = [line for line in lines if line[:2] in {f"{n}." for n in range(1, 10)}]
    assert [line.split(" (at most")[0][3:] for line in steps] == [
        "install .venv-gpu from the wheels in .whl/ (no network)", "environment", "torch-on-CUDA tier",
        "tiny TensorRT plans", "TensorRT tier", "sdxl-random TensorRT plans", "GPU benchmark plan",
    ]
    assert "--no-index" in SCRIPT.read_text() and "tests/test_tensorrt_gpu.py" in done.stdout
    assert lines[-1] == "every file and command the steps need is there"


def test_the_dry_run_fails_on_a_missing_file_or_command() -> None:
    gpu_check = load_script()
    plan = gpu_check.steps("/no/such/python", sys.executable)
    broken = [gpu_check.Step("x", (sys.executable, "tests/no_such_test.py"), 1, ("no/such/file.py",)), *plan]
    problems = gpu_check.check(broken, made_by_the_run="/no/such/python")
    assert problems == ["x: no/such/file.py is missing", "x: tests/no_such_test.py is missing"]
    assert gpu_check.check(plan, made_by_the_run="/elsewhere/python")[0].endswith("the command /no/such/python is not there")


def test_the_steps_fit_the_deadline_by_skipping_what_has_no_time_left(tmp_path, monkeypatch) -> None:
    gpu_check = load_script()
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    quick = gpu_check.Step("quick", (sys.executable, "-c", "print('ok')"), 30)
    slow = gpu_check.Step("slow", (sys.executable, "-c", "import time; time.sleep(30)"), 30)
    monkeypatch.setattr(gpu_check, "steps", lambda python, bootstrap: [quick, slow, quick])
    assert gpu_check.main(["--deadline", "12"]) == 1
    report = (tmp_path / "build/gpu-check/report.md").read_text()
    assert "| quick | passed |" in report and "| slow | timed out after" in report
    assert "| quick | skipped (no time left before the deadline) |" in report
