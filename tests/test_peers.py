"""The benchmark's peers (benchmarks/peers.py) on the tiny model: the weight check fails when a peer
computes with other weights, and the report says so; a peer that cannot run is reported, never dropped.
The peers measured on our weights are in the quick run (tests/test_benchmarks_quick.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.peer_reference import CLIP_PREFIX, REFERENCE_FILE, prepare_reference, write_checkpoint
from benchmarks.peers import (
    CHECK_LIMIT,
    CHECKED,
    PEER_NAMES,
    RUNS,
    PeerJob,
    check_weights,
    measure_peer,
    peer_name,
    prepare_inputs,
    reference_job,
    run_peers,
)
from benchmarks.report import markdown
from benchmarks.summary import summarize
from engines.models.presets import build_tiny_components, save_pipeline

SIZE = 256


def results_with(peers: dict) -> dict:
    """The smallest run the report renders, holding this peers section."""
    results = {
        "model": "tiny", "machine_label": "test-2c", "command": "python -m benchmarks --sections peers",
        "started": "2026-12-02T00:00:00+00:00", "duration_s": 1.0, "device": "cpu",
        "plan": {"name": "cpu-full", "size": SIZE},
        "machine": {"cpu_model": "test", "usable_cpus": 2, "cpu_simd_flags": [], "gpu": None, "memory_bytes": 2**30,
                    "libraries": {}},
        "peers": peers, "notes": [], "errors": {},
    }
    results["summary"] = summarize(results)
    return results


def clip_keys(directory: Path, folder: str) -> dict[str, torch.Tensor]:
    return load_file(directory / folder / "model.safetensors")


def test_the_checkpoint_is_written_in_the_layout_the_peers_read(tmp_path: Path) -> None:
    """transformers 5.24 saves the first text encoder without `text_model.`, which the peers' 5.5
    silently replaces with random weights; the peers' checkpoint holds the same tensors, prefixed."""
    components = build_tiny_components()
    save_pipeline(components, tmp_path / "plain")
    write_checkpoint(components, tmp_path / "peers")
    plain = clip_keys(tmp_path / "plain", "text_encoder")
    assert not any(key.startswith(CLIP_PREFIX) for key in plain)  # the trap is still there to step around
    for folder in ("text_encoder", "text_encoder_2"):
        written = clip_keys(tmp_path / "peers", folder)
        assert all(key.startswith((CLIP_PREFIX, "text_projection.")) for key in written)
    written = clip_keys(tmp_path / "peers", "text_encoder")
    assert set(written) == {CLIP_PREFIX + key for key in plain}
    assert all(torch.equal(written[CLIP_PREFIX + key], tensor.half()) for key, tensor in plain.items())  # float16, as exported


def test_check_weights_passes_small_differences_and_names_what_differs() -> None:
    rng = np.random.default_rng(0)
    ours = {name: rng.standard_normal((1, 8, 16)) for name in CHECKED}
    ours["image"] = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    close = {name: value * 1.02 if name != "image" else value for name, value in ours.items()}
    errors, failures = check_weights(ours, close)
    assert failures == [] and errors["image"] == 0.0 and 0.019 < errors["unet_output"] < 0.021

    other = {**close, "prompt_embeds": rng.standard_normal((1, 8, 16)), "pooled_prompt_embeds": np.zeros((1, 4))}
    errors, failures = check_weights(ours, other)
    assert errors["prompt_embeds"] > CHECK_LIMIT and errors["pooled_prompt_embeds"] is None
    assert failures[0].startswith("its text embeddings differ from ours by") and f"(limit {CHECK_LIMIT:.0%})" in failures[0]
    assert failures[1] == "its pooled text embeddings have shape [1, 4], ours [1, 8, 16]"


def test_without_the_peers_environment_every_peer_is_reported_not_measured(tmp_path: Path) -> None:
    section = run_peers(PeerJob("tiny", SIZE, 1, 1, tmp_path, python=tmp_path / "no-such-python"))
    assert [row["name"] for row in section["rows"]] == [peer_name(peer, weights) for peer, weights in RUNS]
    assert len(section["rows"]) == 4
    for row in section["rows"]:
        assert "seconds" not in row and row["not_measured"].startswith("no peer environment:")
    text = markdown(results_with(section))
    assert text.count("> **PEER NOT MEASURED:") == 4
    assert f"| {peer_name('optimum-intel', 'int8')} | – | **not measured**: no peer environment:" in text


@pytest.mark.slow
def test_a_peer_on_other_text_encoder_weights_fails_the_check_and_the_report_says_why(tmp_path: Path, presets_dir: Path) -> None:
    """Our reference, then the peers' checkpoint with the first text encoder's weights perturbed, as the
    trap of an older transformers would leave it: the export and both peers run, and neither is timed."""
    job = PeerJob("tiny", SIZE, 1, 1, tmp_path, presets_dir=presets_dir)
    reference = reference_job(job)
    reference.directory.mkdir(parents=True)
    prepare_reference(reference)
    weights = reference.checkpoint / "text_encoder" / "model.safetensors"
    generator = torch.Generator().manual_seed(1)
    perturbed = {key: tensor + tensor.float().std() * torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
                 for key, tensor in load_file(weights).items()}
    save_file(perturbed, weights, metadata={"format": "pt"})

    section: dict = {}
    directory = prepare_inputs(job, section)  # the reference is current: only the export runs, on the perturbed checkpoint
    assert directory == reference.directory and set(section["export_seconds"]) == {"fp16", "int8"}
    with np.load(directory / REFERENCE_FILE) as stored:
        ours = {name: stored[name] for name in CHECKED}
    rows = [{"peer": peer, "weights": "fp16", "name": peer_name(peer, "fp16")} for peer in PEER_NAMES]
    for row in rows:
        measure_peer(job, directory, ours, row)
        assert "seconds" not in row, row
        assert row["not_measured"].startswith("weight check failed: its text embeddings differ from ours by"), row["not_measured"]
        errors = row["check"]["errors"]
        assert errors["prompt_embeds"] > CHECK_LIMIT  # the perturbed encoder
        assert errors["pooled_prompt_embeds"] < CHECK_LIMIT and errors["unet_output"] < CHECK_LIMIT  # the rest is ours

    text = markdown(results_with({**section, "python": str(job.python), "size": SIZE, "check_limit": CHECK_LIMIT, "rows": rows}))
    for row in rows:
        assert f"> **PEER NOT MEASURED: {row['name']}: weight check failed: its text embeddings differ" in text
        assert f"| {row['name']} | – | **not measured**: weight check failed:" in text
    assert "fastest peer" not in text
