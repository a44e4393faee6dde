"""The Dockerfile, parsed (Docker cannot run on these machines): targets, user, port, volumes,
entrypoint, healthcheck, and a layer order where a code change does not reinstall torch."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from engines.core.driver import MIN_DRIVER
from service.settings import OPTIONS, env_name, load_settings
from tests.dockerfile_stages import Dockerfile, Instruction, exec_form, read_dockerfile, run_commands, split_options
from tests.helpers import REPO

TARGETS = ("cpu", "gpu")
# All a dependency stage may see: a code change must not invalidate its layers.
DEPENDENCY_FILES = {"pyproject.toml", "docker/requirements.py", "constraints/cpu.txt", "constraints/gpu.txt"}
CONSTRAINTS = {target: REPO / "constraints" / f"{target}.txt" for target in TARGETS}
CUDA_MAJOR = 13


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return read_dockerfile()


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    options, words = split_options(shlex.split(instruction.value))
    return options, words[:-1], words[-1]


def dependency_stage(dockerfile: Dockerfile, target: str) -> str:
    """The stage whose virtual environment the target copies."""
    (copy,) = [i for i in dockerfile.stages[target].all("COPY") if "from" in copy_sources(i)[0]]
    return copy_sources(copy)[0]["from"]


def code_copy(dockerfile: Dockerfile, target: str) -> Instruction:
    (copy,) = [i for i in dockerfile.stages[target].all("COPY") if copy_sources(i)[1] == ["."]]
    return copy


def test_a_plain_build_makes_the_gpu_image(dockerfile: Dockerfile) -> None:
    assert list(dockerfile.stages)[-1] == "gpu"


def test_gpu_image_starts_from_a_cuda_runtime_and_cpu_image_from_python(dockerfile: Dockerfile) -> None:
    gpu, cpu = dockerfile.root_image("gpu"), dockerfile.root_image("cpu")
    assert gpu.startswith("nvidia/cuda:") and "-runtime-" in gpu, gpu
    assert cpu.startswith("python:3.") and "cuda" not in cpu, cpu


def pins(path: Path) -> dict[str, Version]:
    """name -> version of a constraints file, where every line is NAME==VERSION."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line} is not a pin"
            found[requirement.name] = Version(specifier.version)
    return found


def test_one_cuda_major_across_the_base_torch_tensorrt_and_onnxruntime(dockerfile: Dockerfile) -> None:
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-\S+", dockerfile.root_image("gpu"))
    assert base and int(base.group(1)) == CUDA_MAJOR, dockerfile.root_image("gpu")
    gpu, cpu = pins(CONSTRAINTS["gpu"]), pins(CONSTRAINTS["cpu"])
    # PyPI's default Linux wheel of torch 2.13.0 is a CUDA 13.0 build; the CPU install pins the same torch.
    assert gpu["torch"] == cpu["torch"] == Version("2.13.0")
    # TensorRT for CUDA 13, all three of its packages at one version.
    trt = {name: version for name, version in gpu.items() if name.startswith("tensorrt")}
    assert set(trt) == {f"tensorrt-cu{CUDA_MAJOR}", f"tensorrt-cu{CUDA_MAJOR}-bindings", f"tensorrt-cu{CUDA_MAJOR}-libs"}
    assert len(set(trt.values())) == 1 and next(iter(trt.values())).major >= 11
    # onnxruntime-gpu's PyPI builds are CUDA 13 from 1.27 on.
    assert gpu["onnxruntime-gpu"] >= Version("1.27")
    assert "onnx" in gpu
    assert not [name for name in gpu if re.search(r"cu(?!%d)\d\d\b" % CUDA_MAJOR, name)], "another CUDA major"
    # The gpu extra asks for the same packages, with bounds the pins satisfy.
    extra = {r.name: r for r in map(Requirement, requirements_of(["gpu"]))}
    assert {"tensorrt", "tensorrt-cu12"}.isdisjoint(extra), "TensorRT must name its CUDA major"
    for name in (f"tensorrt-cu{CUDA_MAJOR}", "onnxruntime-gpu", "onnx", "torch"):
        assert extra[name].specifier.contains(gpu[name]), (name, extra[name], gpu[name])
    assert not extra["onnxruntime-gpu"].specifier.contains("1.26.0")  # the last CUDA 12 build


def requirements_of(extras: list[str]) -> list[str]:
    return subprocess.run(
        [sys.executable, "docker/requirements.py", "pyproject.toml", *extras],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()


def test_no_cuda_12_index_anywhere() -> None:
    files = ["Dockerfile", "Makefile", "pyproject.toml", "README.md", *map(str, CONSTRAINTS.values())]
    files += [str(path.relative_to(REPO)) for path in sorted((REPO / "docs").glob("*.md"))]
    files += [str(path) for path in (REPO / "docker").iterdir() if path.is_file()]
    for name in files:
        text = (REPO / name).read_text()
        assert not re.search(r"whl/cu\d+|cu12\d", text), f"{name} names a CUDA-specific torch index"


def resolve_args(dockerfile: Dockerfile, target: str, word: str) -> str:
    """${NAME} in a RUN word -> the default of the stage ARG NAME."""
    defaults = dict(i.value.partition("=")[::2] for i in dockerfile.inherited(target, "ARG"))
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), word)


@pytest.mark.parametrize("target", TARGETS)
def test_every_install_goes_through_the_targets_constraints(dockerfile: Dockerfile, target: str) -> None:
    installs = dockerfile.pip_installs(dependency_stage(dockerfile, target))
    assert installs
    for command in installs:
        constraints = [command[n + 1] for n, w in enumerate(command) if w in ("-c", "--constraint")]
        assert constraints and all(c.endswith(f"constraints/{target}.txt") for c in constraints), command
    if target == "gpu":
        # torch from PyPI (no CUDA-specific torch index); TensorRT's libraries from NVIDIA's index.
        assert not [c for c in installs if "--index-url" in c], installs
        (extras,) = [c for c in installs if "-r" in c]
        extra_index = resolve_args(dockerfile, dependency_stage(dockerfile, target), extras[extras.index("--extra-index-url") + 1])
        assert extra_index == "https://pypi.nvidia.com"


def test_the_makefiles_gpu_environment_uses_the_same_constraints() -> None:
    makefile = (REPO / "Makefile").read_text()
    (install,) = [line for line in makefile.splitlines() if "pip install" in line and ".[gpu" in line]
    assert "-c constraints/gpu.txt" in install and "--extra-index-url" in install, install
    assert "NVIDIA_INDEX ?= https://pypi.nvidia.com" in makefile


def test_gpu_image_names_the_driver_it_needs(dockerfile: Dockerfile) -> None:
    gpu, cpu = dockerfile.labels("gpu"), dockerfile.labels("cpu")
    assert gpu["org.sdxl-turbo.nvidia-driver.minimum"] == str(MIN_DRIVER) == "580"
    assert gpu["org.sdxl-turbo.cuda.major"] == str(CUDA_MAJOR)
    assert not any("nvidia" in key for key in cpu)


def test_the_two_images_differ_only_in_base_and_dependencies(dockerfile: Dockerfile) -> None:
    def runtime_part(target: str) -> list[tuple[str, str]]:
        return [
            (i.name, i.value)
            for i in dockerfile.stages[target].instructions
            if not (i.name == "COPY" and "from" in copy_sources(i)[0])
        ]

    assert runtime_part("cpu") == runtime_part("gpu")
    assert dependency_stage(dockerfile, "cpu") != dependency_stage(dockerfile, "gpu")


@pytest.mark.parametrize(
    "target, extras, wanted, unwanted",
    [
        ("gpu", ["gpu"], {"tensorrt-cu13", "onnxruntime-gpu", "torch"}, {"onnxruntime", "tensorrt"}),
        ("cpu", ["onnx", "openvino"], {"onnxruntime", "openvino", "torch"}, {"tensorrt-cu13", "onnxruntime-gpu"}),
    ],
)
def test_each_image_installs_its_own_extras(
    dockerfile: Dockerfile, target: str, extras: list[str], wanted: set[str], unwanted: set[str]
) -> None:
    commands = [c for i in dockerfile.inherited(dependency_stage(dockerfile, target), "RUN") for c in run_commands(i.value)]
    (listing,) = [c for c in commands if len(c) > 1 and c[1].endswith("requirements.py")]
    assert listing[3 : listing.index(">")] == extras
    names = {Requirement(line).name for line in requirements_of(extras)}
    assert wanted <= names and not (unwanted & names), names


def test_requirements_script_names_an_unknown_extra() -> None:
    result = subprocess.run(
        [sys.executable, "docker/requirements.py", "pyproject.toml", "cuda"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unknown extra cuda" in result.stderr and "gpu" in result.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_a_code_change_does_not_reinstall_dependencies(dockerfile: Dockerfile, target: str) -> None:
    deps = dependency_stage(dockerfile, target)
    # The dependency stages see only the dependency manifests, never the code.
    for copy in dockerfile.inherited(deps, "COPY"):
        options, sources, _ = copy_sources(copy)
        assert "from" not in options and set(sources) <= DEPENDENCY_FILES, f"line {copy.line}: {copy.value}"
    # torch (the largest layer) is installed before pyproject.toml arrives: editing it keeps torch.
    layers = [i for stage in dockerfile.lineage(deps) for i in stage.instructions]
    torch_install = next(
        n for n, i in enumerate(layers)
        if i.name == "RUN" and any(w == "torch" or w.startswith("torch==") for c in run_commands(i.value) for w in c)
    )
    pyproject_copy = next(n for n, i in enumerate(layers) if i.name == "COPY" and "pyproject.toml" in i.value)
    assert torch_install < pyproject_copy
    # The image copies the installed environment first, the code after, and installs nothing after the code.
    instructions = dockerfile.stages[target].instructions
    venv_copy = next(n for n, i in enumerate(instructions) if i.name == "COPY" and "from" in copy_sources(i)[0])
    code = instructions.index(code_copy(dockerfile, target))
    assert venv_copy < code
    assert not [i for i in instructions[code:] if i.name == "RUN"]


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_a_numeric_non_root_user_that_owns_the_data(dockerfile: Dockerfile, target: str) -> None:
    users = dockerfile.inherited(target, "USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].value
    uid, _, gid = user.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, user
    assert gid.isdigit() and int(gid) != 0, user
    chowns = [c for i in dockerfile.inherited(target, "RUN") for c in run_commands(i.value) if c[0] == "chown"]
    owned = [Path(p) for c in chowns if c[-2] == user for p in c[-1:]]
    for volume in volumes(dockerfile, target):
        assert any(volume.is_relative_to(p) for p in owned), f"{volume} is not chowned to {user}"


def volumes(dockerfile: Dockerfile, target: str) -> list[Path]:
    return [Path(v) for i in dockerfile.inherited(target, "VOLUME") for v in exec_form(i.value)]


@pytest.mark.parametrize("target", TARGETS)
def test_volumes_hold_the_model_files_the_engines_and_the_image_cache(dockerfile: Dockerfile, target: str) -> None:
    env = dockerfile.env(target)
    found = volumes(dockerfile, target)
    for variable in ("HF_HOME", "SDXL_ENGINE_DIR", "SDXL_CACHE_DIR"):
        assert any(Path(env[variable]).is_relative_to(v) for v in found), f"{variable}={env[variable]} is on no volume"
    # The cache directory is below its volume's root: the service chmods it to 0700, which needs ownership.
    assert Path(env["SDXL_CACHE_DIR"]) not in found
    # Changes to a volume's directory after VOLUME are discarded: the directories are made before.
    instructions = dockerfile.stages[target].instructions
    volume_at = next(n for n, i in enumerate(instructions) if i.name == "VOLUME")
    made_at = next(n for n, i in enumerate(instructions) if i.name == "RUN" and "mkdir" in i.value)
    assert made_at < volume_at


@pytest.mark.parametrize("target", TARGETS)
def test_environment_holds_valid_settings_listening_on_the_exposed_port(dockerfile: Dockerfile, target: str) -> None:
    env = dockerfile.env(target)
    known = {env_name(field) for field in OPTIONS}
    assert {k for k in env if k.startswith("SDXL_")} <= known, "an SDXL_ variable the service does not read"
    settings = load_settings([], environ=env)  # the service's own validation
    assert settings.host == "0.0.0.0"  # the default, 127.0.0.1, is unreachable from outside a container
    assert [i.value for i in dockerfile.inherited(target, "EXPOSE")] == [str(settings.port)] == ["5000"]
    assert settings.engine_dir == Path(env["SDXL_ENGINE_DIR"]) and settings.cache_dir == Path(env["SDXL_CACHE_DIR"])
    assert env["PYTHONPATH"] == copy_sources(code_copy(dockerfile, target))[2]


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_and_healthcheck_run_the_repository_script(dockerfile: Dockerfile, target: str) -> None:
    entrypoint = exec_form(dockerfile.inherited(target, "ENTRYPOINT")[-1].value)
    assert exec_form(dockerfile.inherited(target, "CMD")[-1].value) == ["serve"]
    # The script is docker/entrypoint.sh, which arrives with the code.
    code_destination = Path(copy_sources(code_copy(dockerfile, target))[2])
    script = REPO / Path(entrypoint[0]).relative_to(code_destination)
    assert script == REPO / "docker" / "entrypoint.sh"
    assert os.access(script, os.X_OK), "docker/entrypoint.sh must be executable (git keeps the bit)"
    options, _, command = dockerfile.inherited(target, "HEALTHCHECK")[-1].value.partition(" CMD ")
    assert exec_form(command) == [*entrypoint, "healthcheck"]  # tests/test_entrypoint.py runs it
    assert {"interval", "timeout", "start-period", "retries"} <= split_options(options.split())[0].keys()
