"""manifest.json: writing, reading, hashing, and every refusal (each one says how to rebuild)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from engines.core.hardware import GpuInfo
from engines.core.files import bytes_sha256, file_sha256
from engines.manifest import MANIFEST_NAME, VERIFIED_HASHES, Manifest, ManifestError, inputs_key
from tests.helpers import FAKE_GPU, FAKE_TENSORRT, write_fake_engines

REBUILD = "python build_engines.py --model tiny --out {dir} --batch 1-4 --sizes 512x512,768x768"


@pytest.fixture
def engines(tmp_path: Path) -> tuple[Path, Manifest]:
    return tmp_path, write_fake_engines(tmp_path)


def test_written_manifest_reads_back_the_same(engines) -> None:
    directory, manifest = engines
    assert Manifest.read(directory) == manifest
    data = json.loads((directory / MANIFEST_NAME).read_text())
    assert data["model"] == {"source": "tiny", "fingerprint": "preset:tiny-v1-seed0"}
    assert data["gpu"] == {"name": FAKE_GPU[0], "compute_capability": FAKE_GPU[1]}
    assert data["versions"]["tensorrt"] == FAKE_TENSORRT
    assert data["components"]["unet"]["plan"]["files"] == {"unet.plan": file_sha256(directory / "unet.plan")}


def test_write_is_atomic_and_readable_by_others(engines) -> None:
    directory, manifest = engines
    manifest.write(directory)
    assert sorted(p.name for p in directory.iterdir() if p.is_file()) == [MANIFEST_NAME, "unet.plan", "vae_decoder.plan", "vae_encoder.plan"]
    assert stat.S_IMODE((directory / MANIFEST_NAME).stat().st_mode) == 0o644


def test_hashes_are_sha256_of_the_bytes(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    expected = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_sha256(tmp_path / "f") == bytes_sha256(b"abc") == expected
    assert inputs_key({"a": 1, "b": [2]}) == inputs_key({"b": [2], "a": 1}) != inputs_key({"a": 2, "b": [2]})


def test_intact_files_verify(engines) -> None:
    directory, manifest = engines
    manifest.verify_files(directory, "plan")
    manifest.verify_files(directory, "onnx")


def test_a_changed_plan_is_refused_with_how_to_rebuild(engines) -> None:
    directory, manifest = engines
    (directory / "unet.plan").write_bytes(b"plan of unet, patched")
    with pytest.raises(ManifestError) as refused:
        manifest.verify_files(directory, "plan")
    message = str(refused.value)
    assert "unet.plan does not match manifest.json" in message and "refused" in message
    assert REBUILD.format(dir=directory) in message
    manifest.verify_files(directory, "onnx")  # the graphs are untouched


def test_a_changed_onnx_graph_is_refused_with_an_onnx_only_rebuild(engines) -> None:
    directory, manifest = engines
    (directory / "vae_decoder" / "model.onnx").write_bytes(b"something else")
    with pytest.raises(ManifestError, match="vae_decoder/model.onnx does not match") as refused:
        manifest.verify_files(directory, "onnx")
    assert "--onnx-only" in str(refused.value)


def test_a_file_changed_after_a_verification_is_refused_all_the_same(engines) -> None:
    """Verified hashes are remembered by the files' identity: a same-size rewrite is hashed again."""
    directory, manifest = engines
    manifest.verify_files(directory, "plan")
    assert (directory / VERIFIED_HASHES).is_file()
    plan = directory / "unet.plan"
    plan.write_bytes(bytes(len(plan.read_bytes())))
    with pytest.raises(ManifestError, match="unet.plan does not match manifest.json"):
        manifest.verify_files(directory, "plan")


def test_a_missing_file_is_refused(engines) -> None:
    directory, manifest = engines
    (directory / "vae_decoder.plan").unlink()
    with pytest.raises(ManifestError, match="vae_decoder.plan is listed in manifest.json but missing"):
        manifest.verify_files(directory, "plan")


def test_the_bytes_in_hand_are_checked_not_the_file(engines) -> None:
    """The TensorRT backend hashes the plan bytes it deserializes."""
    directory, manifest = engines
    expected = manifest.components["unet"].plan.files["unet.plan"]
    manifest.verify_file(directory, "unet.plan", expected, "plan", actual=bytes_sha256(b"plan of unet"))
    with pytest.raises(ManifestError, match="does not match"):
        manifest.verify_file(directory, "unet.plan", expected, "plan", actual=bytes_sha256(b"swapped"))


def test_the_same_gpu_and_tensorrt_pass(engines) -> None:
    directory, manifest = engines
    manifest.check_tensorrt(directory, GpuInfo(*FAKE_GPU), FAKE_TENSORRT)


def test_another_gpu_is_refused(engines) -> None:
    directory, manifest = engines
    with pytest.raises(ManifestError) as refused:
        manifest.check_tensorrt(directory, GpuInfo("NVIDIA L4", "8.9"), FAKE_TENSORRT)
    message = str(refused.value)
    assert "built for NVIDIA H100 80GB HBM3 (compute capability 9.0)" in message
    assert "this GPU is NVIDIA L4 (compute capability 8.9)" in message
    assert "rebuild on this machine with `" + REBUILD.format(dir=directory) + "`" in message


def test_the_same_gpu_name_with_another_compute_capability_is_refused(engines) -> None:
    directory, manifest = engines
    with pytest.raises(ManifestError, match="built for"):
        manifest.check_tensorrt(directory, GpuInfo(FAKE_GPU[0], "8.0"), FAKE_TENSORRT)


def test_another_tensorrt_version_is_refused(engines) -> None:
    directory, manifest = engines
    with pytest.raises(ManifestError, match=f"built with TensorRT {FAKE_TENSORRT}, this is TensorRT 10.9.0.34"):
        manifest.check_tensorrt(directory, GpuInfo(*FAKE_GPU), "10.9.0.34")


def test_an_onnx_only_build_has_no_plans_to_run(tmp_path: Path) -> None:
    manifest = write_fake_engines(tmp_path, with_plans=False)
    with pytest.raises(ManifestError, match="no TensorRT plans for unet, vae_decoder"):
        manifest.check_tensorrt(tmp_path, GpuInfo(*FAKE_GPU), FAKE_TENSORRT)
    with pytest.raises(ManifestError, match="lists no plan file for unet"):
        manifest.verify_files(tmp_path, "plan")
    manifest.verify_files(tmp_path, "onnx")


def test_another_model_is_refused(engines) -> None:
    directory, manifest = engines
    with pytest.raises(ManifestError) as refused:
        manifest.check_model(directory, "sdxl-random", "preset:sdxl-random-seed0", "plan")
    message = str(refused.value)
    assert "built for the model tiny (preset:tiny-v1-seed0), not sdxl-random (preset:sdxl-random-seed0)" in message
    assert "python build_engines.py --model sdxl-random --out" in message


def test_the_same_name_with_other_weights_is_refused(engines) -> None:
    directory, manifest = engines
    with pytest.raises(ManifestError, match="not tiny \\(sha256:other\\)"):
        manifest.check_model(directory, "tiny", "sha256:other", "onnx")
    manifest.check_model(directory, "tiny", None, "onnx")  # weights not known yet: the name decides
    manifest.check_model(directory, "tiny", "preset:tiny-v1-seed0", "onnx")


def test_no_manifest_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as refused:
        Manifest.read(tmp_path, "tiny", "onnx")
    assert str(refused.value) == (
        f"no manifest.json in {tmp_path}: build the engines first with "
        f"`python build_engines.py --model tiny --out {tmp_path} --onnx-only`"
    )


@pytest.mark.parametrize("content", ["{not json", '{"format": 99}', '{"format": 1, "model": {}}'])
def test_an_unreadable_manifest_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ManifestError, match="cannot be read .*--force`$"):
        Manifest.read(tmp_path)
