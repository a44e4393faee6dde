"""The Dockerfile, parsed (Docker cannot run on these machines): targets, user, port, volumes,
entrypoint, healthcheck, and a layer order where a code change does not reinstall torch."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from service.settings import OPTIONS, env_name, load_settings
from tests.dockerfile_stages import Dockerfile, Instruction, exec_form, read_dockerfile, run_commands, split_options
from tests.helpers import REPO

TARGETS = ("cpu", "gpu")
# All a dependency stage may see: a code change must not invalidate its layers.
DEPENDENCY_FILES = {"pyproject.toml", "docker/requirements.py", "constraints/cpu.txt"}


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
        ("gpu", ["gpu"], {"tensorrt", "onnxruntime-gpu", "torch"}, {"onnxruntime"}),
        ("cpu", ["onnx", "openvino"], {"onnxruntime", "openvino", "torch"}, {"tensorrt", "onnxruntime-gpu"}),
    ],
)
def test_each_image_installs_its_own_extras(
    dockerfile: Dockerfile, target: str, extras: list[str], wanted: set[str], unwanted: set[str]
) -> None:
    commands = [c for i in dockerfile.inherited(dependency_stage(dockerfile, target), "RUN") for c in run_commands(i.value)]
    (listing,) = [c for c in commands if len(c) > 1 and c[1].endswith("requirements.py")]
    assert listing[3 : listing.index(">")] == extras
    printed = subprocess.run(
        [sys.executable, "docker/requirements.py", "pyproject.toml", *extras],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    names = {Requirement(line).name for line in printed}
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
