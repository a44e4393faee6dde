"""`make gpu-check`: the whole GPU path on a GPU machine in one command, one report file back.

For a machine with Python 3.12, the NVIDIA driver and the project's wheels in .whl/ (`make
gpu-wheels` on a machine with network; torch, TensorRT and their CUDA libraries among them or
already installed), no network: makes .venv-gpu from the wheels if it is missing, then runs the
torch-on-CUDA tier, builds the tiny and the sdxl-random TensorRT plans, runs the TensorRT tier and
the GPU benchmark plan, and writes build/gpu-check/report.md. Every step has a time limit and the
whole run a deadline (8 minutes by default); a step with no time left is reported as skipped, so
the report always comes back. Only the standard library: it runs before anything is installed.

`--dry-run` lists every step, checks that the files and commands each one needs exist, and exits
non-zero when one is missing (the CPU test suite runs it). Commands only the GPU machine has
(nvidia-smi, Python 3.12) are listed with what this machine has, not required.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
OUT = Path("build/gpu-check")
WHEELS = Path(".whl")
VENV = Path(".venv-gpu")
TINY_PLANS = OUT / "engines-tiny"
SDXL_PLANS = Path("build/engines-gpu")  # where `make bench` looks: built once, reused
DEADLINE_S = 480
TAIL = 40  # lines of each step's output kept in the report


@dataclass(frozen=True)
class Step:
    name: str
    command: tuple[str, ...]
    limit_s: int
    needs: tuple[str, ...] = ()  # repository files the step reads
    skip_if: str | None = None  # a path: the step is done when it exists


def steps(python: str, bootstrap: str) -> list[Step]:
    """What a GPU check runs, in order; `python` is the GPU environment's interpreter."""
    pytest = (python, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider")
    return [
        Step(
            "install .venv-gpu from the wheels in .whl/ (no network)",
            (bootstrap, "-c", _INSTALL, str(VENV), str(WHEELS)),
            240,
            ("pyproject.toml", "constraints/gpu.txt"),
            skip_if=str(VENV / ".installed-gpu"),
        ),
        Step("environment", (python, "-c", _ENVIRONMENT), 60, ("engines/core/driver.py",)),
        Step("torch-on-CUDA tier", (*pytest, "tests/test_torch_cuda.py"), 120, ("tests/test_torch_cuda.py",)),
        Step(
            "tiny TensorRT plans",
            (python, "build_engines.py", "--model", "tiny", "--out", str(TINY_PLANS), "--batch", "1-2", "--sizes", "512x512,768x512"),
            120,
            ("build_engines.py",),
        ),
        Step("TensorRT tier", (*pytest, "tests/test_tensorrt_gpu.py"), 180, ("tests/test_tensorrt_gpu.py",)),
        Step(
            "sdxl-random TensorRT plans",
            (python, "build_engines.py", "--model", "sdxl-random", "--out", str(SDXL_PLANS)),
            600,
            ("build_engines.py",),
        ),
        Step(
            "GPU benchmark plan",
            (python, "-m", "benchmarks", "--engine-dir", str(SDXL_PLANS), "--out", str(OUT / "benchmarks")),
            600,
            ("benchmarks/__main__.py", "benchmarks/plan.py"),
        ),
    ]


# Steps run as `python -c`, so the report shows exactly what ran.
_INSTALL = """\
import subprocess, sys, venv, pathlib
target, wheels = pathlib.Path(sys.argv[1]), sys.argv[2]
venv.create(target, with_pip=True, system_site_packages=True)  # a torch already installed stays usable
subprocess.run([str(target / 'bin/python'), '-m', 'pip', 'install', '--no-index', '--find-links', wheels,
                '-c', 'constraints/gpu.txt', '-e', '.[gpu,test,bench]'], check=True)
(target / '.installed-gpu').touch()
"""
_ENVIRONMENT = """\
import json, platform, subprocess, torch, tensorrt
from engines.core.hardware import cuda_gpu
smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'],
                     capture_output=True, text=True).stdout.strip()
print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
                  'tensorrt': tensorrt.__version__, 'gpu': str(cuda_gpu()), 'nvidia-smi': smi}, indent=1))
raise SystemExit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU')
"""


@dataclass
class Outcome:
    step: Step
    status: str  # passed, failed, timed out, skipped (...), done before
    seconds: float = 0.0
    output: str = ""


def shown(command: Sequence[str]) -> str:
    """A command as one line: an inline script by its first line."""
    return " ".join(f"'{a.splitlines()[0]} ...'" if "\n" in a else a for a in command)


def run(step: Step, limit_s: float) -> Outcome:
    started = time.monotonic()
    try:
        done = subprocess.run(step.command, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return Outcome(step, f"timed out after {limit_s:.0f} s", time.monotonic() - started, output)
    status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
    return Outcome(step, status, time.monotonic() - started, done.stdout + done.stderr)


def check(plan: Sequence[Step], made_by_the_run: str) -> list[str]:
    """What is missing for the plan: repository files, and each step's program (a path or on PATH);
    `made_by_the_run` (the GPU interpreter, which the install step makes) need not exist yet."""
    problems = []
    for step in plan:
        for need in step.needs:
            if not (REPO / need).is_file():
                problems.append(f"{step.name}: {need} is missing")
        program = step.command[0]
        if program != made_by_the_run and not (shutil.which(program) or (REPO / program).is_file()):
            problems.append(f"{step.name}: the command {program} is not there")
        for argument in step.command[1:]:
            if argument.endswith((".py", ".txt")) and not argument.startswith("-") and not (REPO / argument).is_file():
                problems.append(f"{step.name}: {argument} is missing")
    return problems


def machine() -> dict[str, str | None]:
    return {"python3.12": shutil.which("python3.12"), "nvidia-smi": shutil.which("nvidia-smi"), "wheels": str(WHEELS)
            if (REPO / WHEELS).is_dir() else None}


def report(outcomes: Sequence[Outcome], deadline_s: int) -> str:
    lines = [f"# gpu-check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"host: {platform.node()}; deadline {deadline_s} s; total {sum(o.seconds for o in outcomes):.0f} s", "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {o.step.name} | {o.status} | {o.seconds:.0f} |" for o in outcomes]
    for manifest in (REPO / TINY_PLANS / "manifest.json", REPO / SDXL_PLANS / "manifest.json"):
        if manifest.is_file():
            components = json.loads(manifest.read_text()).get("components", {})
            facts = {name: {k: (c.get("plan") or {}).get("details", {}).get(k) for k in ("precision", "layer_dtypes", "tf32")}
                     for name, c in components.items()}
            lines += ["", f"## {manifest.relative_to(REPO)}: what TensorRT built", "", "```", json.dumps(facts, indent=1), "```"]
    for outcome in outcomes:
        tail = "\n".join(outcome.output.strip().splitlines()[-TAIL:])
        lines += ["", f"## {outcome.step.name}: {outcome.status}", "", "`" + shown(outcome.step.command) + "`"]
        if tail:
            lines += ["", "```", tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list the steps and check their files and commands")
    parser.add_argument("--python", default=str(VENV / "bin/python"), help="the GPU environment's interpreter")
    parser.add_argument("--bootstrap", default=shutil.which("python3.12") or sys.executable, help="makes .venv-gpu")
    parser.add_argument("--deadline", type=int, default=DEADLINE_S, help="seconds for the whole run")
    args = parser.parse_args(argv)
    plan = steps(args.python, args.bootstrap)
    if args.dry_run:
        for number, step in enumerate(plan, 1):
            print(f"{number}. {step.name} (at most {step.limit_s} s): {shown(step.command)}")
        print("this machine: " + ", ".join(f"{k} {v or 'absent'}" for k, v in machine().items()))
        problems = check(plan, args.python)
        print("\n".join(problems) or "every file and command the steps need is there")
        return 1 if problems else 0

    started, outcomes = time.monotonic(), []
    for step in plan:
        left = args.deadline - (time.monotonic() - started)
        if step.skip_if and (REPO / step.skip_if).exists():
            outcomes.append(Outcome(step, "done before"))
        elif left < 10:
            outcomes.append(Outcome(step, "skipped (no time left before the deadline)"))
        else:
            outcomes.append(run(step, min(step.limit_s, left)))
            print(f"{step.name}: {outcomes[-1].status} ({outcomes[-1].seconds:.0f} s)", flush=True)
    (REPO / OUT).mkdir(parents=True, exist_ok=True)
    (REPO / OUT / "report.md").write_text(report(outcomes, args.deadline))
    print(f"written: {OUT / 'report.md'} (send this file back)")
    return 0 if all(o.status in ("passed", "done before") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
