"""The hub path without a hub: a Hugging Face cache laid out as a download of stabilityai/sdxl-turbo
leaves it (tests/hub_cache.py), served offline through the code a user's download goes through."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.models import hub
from engines.models.sources import choose_variant, load_components_from_directory, weight_variants
from tests.hub_cache import tiny_pipeline_files, write_directory, write_hub_snapshot
from tests.helpers import EXAMPLE_PROMPT, REPO, generate, request, running_service

REPO_ID = "stabilityai/sdxl-turbo"
COMMIT = "3a98214" + "0" * 33  # any 40 hex digits: the snapshot directory's name is the commit
OLDER = "51e1b90" + "1" * 33


def test_the_allow_patterns_ask_only_for_files_the_real_repository_has() -> None:
    from huggingface_hub.utils import filter_repo_objects

    real = hub.SDXL_TURBO_REPO_FILES
    assert hub.download_variant(real) == "fp16"
    wanted = hub.pipeline_files("fp16")
    missing = [f for f in wanted if f not in real]
    assert not missing, f"the service would ask for files stabilityai/sdxl-turbo does not have: {missing}"
    # Exactly those files, nothing more: no ONNX exports, no single-file checkpoints, no fp32 weights.
    assert sorted(filter_repo_objects(real, allow_patterns=wanted)) == sorted(wanted)
    assert all(f in real for f in hub.pipeline_files(None))


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$HF_HOME with main -> COMMIT, and an older commit reachable by the tag v1.0."""
    home = tmp_path_factory.mktemp("hf-home")
    files = tiny_pipeline_files(("fp16",))
    laid_out = [f for f in files if f not in hub.SDXL_TURBO_REPO_FILES]
    assert not laid_out, f"the test cache holds files the real repository does not: {laid_out}"
    write_hub_snapshot(home / "hub", REPO_ID, COMMIT, files)
    write_hub_snapshot(home / "hub", REPO_ID, OLDER, files, refs=("v1.0",))
    return home


def offline_env(hf_home: Path) -> dict[str, str]:
    return {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


def test_the_cache_is_what_huggingface_hub_itself_reads(hf_home: Path) -> None:
    from huggingface_hub import scan_cache_dir

    scan = scan_cache_dir(hf_home / "hub")
    assert not scan.warnings
    (repo,) = scan.repos
    revisions = {r.commit_hash: r for r in repo.revisions}
    assert set(revisions) == {COMMIT, OLDER} and revisions[COMMIT].refs == {"main"}
    assert revisions[COMMIT].nb_files == len(hub.pipeline_files("fp16"))


@pytest.mark.slow
def test_the_service_serves_a_hub_download_offline(hf_home: Path, tmp_path: Path) -> None:
    args = ["--model", REPO_ID, "--precision", "fp32", "--cache-dir", str(tmp_path / "images"), "--log-format", "text"]
    before = cache_state(hf_home)
    with running_service(args, env=offline_env(hf_home)) as service:
        ready = request(service.base_url, "GET", "/readyz").json()
        assert ready["model"] == f"hf:{REPO_ID}@{COMMIT}"  # the fingerprint is the commit, not "main"
        reply = generate(service.base_url, {"prompt": EXAMPLE_PROMPT, "seed": 1})
        assert reply.status == 200 and reply.image().size == (512, 512)
        log = service.log()
    assert "loading unet: diffusion_pytorch_model.fp16.safetensors, fp16 files" in log
    assert f"at commit {COMMIT[:12]} in the Hugging Face cache" in log
    # Nothing written to the cache: deploy/ mounts it read-only into the replicas.
    assert cache_state(hf_home) == before


def cache_state(hf_home: Path) -> dict[str, int]:
    """Every path under $HF_HOME and its modification time."""
    return {str(path): path.lstat().st_mtime_ns for path in hf_home.rglob("*")}


def _in_process_offline(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))


@pytest.mark.parametrize("revision, commit", [(None, COMMIT), ("main", COMMIT), ("v1.0", OLDER), (OLDER, OLDER)])
def test_a_revision_is_pinned_to_the_commit_it_names(monkeypatch, hf_home: Path, revision, commit) -> None:
    from engines.models.sources import model_fingerprint, prepare_model

    _in_process_offline(monkeypatch, hf_home)
    assert model_fingerprint(REPO_ID, revision) == f"hf:{REPO_ID}@{commit}"
    assert prepare_model(REPO_ID, revision).revision == commit


def run_service(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["--model", REPO_ID, "--revision", "v2.0"], f"{REPO_ID} at revision v2.0 is not in the Hugging Face cache"),
        (["--model", "nobody/no-such-model"], "nobody/no-such-model at revision main is not in the Hugging Face cache"),
        (["--model", "tiny", "--revision", "main"], "--revision main: only hub models have revisions"),
    ],
)
def test_a_model_that_cannot_be_had_ends_in_one_line_and_exit_2(hf_home: Path, args, says) -> None:
    result = run_service([*args, "--log-format", "json"], offline_env(hf_home))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON lines are logs
    assert len(errors) == 1 and errors[0].startswith("error: model: " if "revision main:" not in says else "error: --revision")
    assert says in errors[0]
    assert "Traceback" not in result.stderr


# --- local directories: fp32 weights, and both variants -------------------------------------------


def test_a_directory_with_fp32_weights_loads_them(tmp_path: Path) -> None:
    directory = write_directory(tmp_path / "fp32", tiny_pipeline_files((None,)))
    assert weight_variants(directory / "unet") == {None}
    components = load_components_from_directory(directory, torch.float32)
    assert components.unet.dtype == torch.float32


def test_with_both_variants_a_cpu_reads_the_full_precision_files(tmp_path: Path) -> None:
    # The fp16 files hold zeros: a load that read them (and converted twice) would show it.
    directory = write_directory(tmp_path / "both", tiny_pipeline_files((None, "fp16"), altered="fp16"))
    assert weight_variants(directory / "vae") == {None, "fp16"}
    for dtype in (torch.float32, torch.bfloat16):
        components = load_components_from_directory(directory, dtype)
        assert any(p.abs().sum() > 0 for p in components.unet.parameters()), f"{dtype}: the fp16 files were read"


def test_with_both_variants_a_gpu_reads_the_fp16_files() -> None:
    assert choose_variant({None, "fp16"}, torch.float16) == "fp16"
    assert choose_variant({None}, torch.float16) is None
    assert choose_variant({"fp16"}, torch.float32) == "fp16"
    assert choose_variant({None, "fp16"}, torch.bfloat16) is None


def test_the_cache_layout_names_blobs_as_huggingface_hub_does(tmp_path: Path) -> None:
    snapshot = write_hub_snapshot(tmp_path / "hub", REPO_ID, COMMIT, {"model_index.json": b"{}", "unet/x.safetensors": b"w"})
    assert (snapshot / "unet" / "x.safetensors").is_symlink()
    assert json.loads((snapshot / "model_index.json").read_text()) == {}
    assert (snapshot.parents[1] / "refs" / "main").read_text() == COMMIT
