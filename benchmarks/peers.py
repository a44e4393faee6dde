"""Section peers: what a careful CPU user would run instead of this project, on our weights, in the same run.

Two peers, each with two sets of weights, all exported from our checkpoint by optimum-intel's exporter
(whose layout OpenVINO GenAI loads too), one process per peer and weights, median of the plan's
repeats after a warm-up:
- OpenVINO GenAI's Text2ImagePipeline;
- optimum-intel's OVStableDiffusionXLPipeline, which FastSD CPU builds on;
- fp16 weights, and int8 UNet weights (the exporter's default for SDXL's UNet).
Each runs under the peers' own interpreter (.venv-peers, pinned by constraints/peers.txt: optimum-intel
needs an older transformers than ours), as benchmarks/peer_process.py.

The weight check: a peer's time is reported only when its outputs match ours (benchmarks/peer_reference.py):
the text encoders' for our prompt (through the peer's own tokenizers), the UNet's for fixed inputs,
and the image for our prompt and seed, each within CHECK_LIMIT relative error. On the tiny model the
same weights computed in bf16, from fp16 or int8 copies, stayed within 8 %; a text encoder with other
weights was 100 % off.
A peer that fails it, or cannot run (no environment, a failed export, a crash), is "not measured"
with the reason: never dropped.

Our checkpoint, the reference outputs and the export are kept in --peers-dir and made again only when
the model, the size or constraints/peers.txt change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from benchmarks.isolation import run_isolated
from benchmarks.launcher import REPO
from benchmarks.peer_reference import (
    PROMPT,
    REFERENCE_FILE,
    SEED,
    ReferenceJob,
    prepare_reference,
    read_json,
    reference_is_current,
)
from engines.models.sources import model_fingerprint

logger = logging.getLogger(__name__)

PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
CONSTRAINTS = REPO / "constraints" / "peers.txt"
PEER_NAMES = {"openvino-genai": "OpenVINO GenAI Text2ImagePipeline", "optimum-intel": "optimum-intel OVStableDiffusionXLPipeline"}
WEIGHT_NAMES = {"fp16": "fp16 weights", "int8": "int8 UNet weights"}
RUNS = tuple((peer, weights) for peer in PEER_NAMES for weights in WEIGHT_NAMES)
# What the check compares, in words; the image about mid-grey (its errors against its contrast).
CHECKED = {
    "prompt_embeds": "text embeddings",
    "pooled_prompt_embeds": "pooled text embeddings",
    "unet_output": "UNet output",
    "image": "image",
}
CHECK_LIMIT = 0.25  # relative error (L2); on the tiny model the same weights stayed under 0.08, other weights reached 1
EXPORT_STAMP = "export.json"
EXPORT_TIMEOUT_S = 3600.0  # the full SDXL architecture, traced and converted on 2 cores
RUN_TIMEOUT_S = 1800.0


class PeerUnavailable(Exception):
    """A peer cannot run (no environment, a failed checkpoint, export or process); the message says why."""


@dataclass(frozen=True)
class PeerJob:
    model: str
    size: int
    warmup: int
    repeats: int
    peers_dir: Path
    python: Path = PEERS_PYTHON
    presets_dir: Path | None = None
    log_level: str = "INFO"


def peer_name(peer: str, weights: str) -> str:
    """The one name of a peer row, in the tables, the chart and the headline."""
    return f"{PEER_NAMES[peer]}, {WEIGHT_NAMES[weights]}"


def run_peers(job: PeerJob) -> dict[str, Any]:
    """Every peer row, measured or "not measured" with the reason."""
    rows = [{"peer": peer, "weights": weights, "name": peer_name(peer, weights)} for peer, weights in RUNS]
    section: dict[str, Any] = {
        "python": str(job.python), "prompt": PROMPT, "seed": SEED, "size": job.size, "check_limit": CHECK_LIMIT, "rows": rows,
    }
    try:
        directory = prepare_inputs(job, section)
    except PeerUnavailable as exc:
        logger.error("peers: not measured: %s", exc)
        for row in rows:
            row["not_measured"] = str(exc)
        return section
    with np.load(directory / REFERENCE_FILE) as stored:
        ours = {name: stored[name] for name in CHECKED}
    for row in rows:
        measure_peer(job, directory, ours, row)
    return section


def prepare_inputs(job: PeerJob, section: dict[str, Any]) -> Path:
    """Our checkpoint and reference outputs, then the export: made unless current. Returns their directory."""
    if not job.python.is_file():
        raise PeerUnavailable(f"no peer environment: {job.python} is missing (`make peers-install` creates it)")
    reference = reference_job(job)
    directory = reference.directory
    directory.mkdir(parents=True, exist_ok=True)
    if not reference_is_current(reference):
        logger.info("peers: our checkpoint and reference outputs for %s at %d px", job.model, job.size)
        try:
            run_isolated(prepare_reference, reference)
        except Exception as exc:
            raise PeerUnavailable(f"our checkpoint could not be saved for the peers: {exc.__class__.__name__}: {exc}") from exc
    stamp = {"fingerprint": reference.fingerprint, "constraints": hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()}
    exported = directory / "openvino"
    made = read_json(exported / EXPORT_STAMP)
    if not made or made.get("stamp") != stamp:
        shutil.rmtree(exported, ignore_errors=True)
        logger.info("peers: exporting %s with optimum-intel's exporter into %s", reference.checkpoint, exported)
        args = ["export", str(reference.checkpoint), str(exported)]
        made = {"stamp": stamp, **peer_process(job, args, EXPORT_TIMEOUT_S, "the export")}
        (exported / EXPORT_STAMP).write_text(json.dumps(made, indent=2))
    section["export_seconds"], section["libraries"] = made["seconds"], made["libraries"]
    return directory


def reference_job(job: PeerJob) -> ReferenceJob:
    """Where the model's checkpoint, reference outputs and export live: a folder of --peers-dir per model."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", job.model).strip("-")
    return ReferenceJob(job.model, model_fingerprint(job.model), job.size, job.peers_dir / folder, job.presets_dir, job.log_level)


def measure_peer(job: PeerJob, directory: Path, ours: Mapping[str, np.ndarray], row: dict[str, Any]) -> None:
    """One peer's process: its outputs checked against ours, then its times, into `row`."""
    out = directory / "runs" / f"{row['peer']}-{row['weights']}"
    args = ["run", row["peer"], str(directory / "openvino" / row["weights"]), str(directory / REFERENCE_FILE), str(out),
            "--size", str(job.size), "--warmup", str(job.warmup), "--repeats", str(job.repeats)]
    logger.info("peers: %s", row["name"])
    try:
        measured = peer_process(job, args, RUN_TIMEOUT_S, "the peer")
    except PeerUnavailable as exc:
        row["not_measured"] = str(exc)
        return
    with np.load(out / "check.npz") as stored:
        errors, failures = check_weights(ours, {name: stored[name] for name in CHECKED})
    row["check"] = {"errors": errors, "passed": not failures}
    if failures:
        row["not_measured"] = "weight check failed: " + "; ".join(failures) + ": it does not compute with our weights"
        logger.error("peers: %s: %s", row["name"], row["not_measured"])
        return
    row.update(measured)
    logger.info("peers: %s: %.3f s per image (median)", row["name"], measured["seconds"]["median"])


def check_weights(ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray]) -> tuple[dict[str, float | None], list[str]]:
    """Each output's relative error against ours (None where the shapes differ), and what failed, in words."""
    errors: dict[str, float | None] = {}
    failures = []
    for name, words in CHECKED.items():
        mine, other = ours[name].astype(np.float64), theirs[name].astype(np.float64)
        if mine.shape != other.shape:
            errors[name] = None
            failures.append(f"its {words} have shape {list(other.shape)}, ours {list(mine.shape)}")
            continue
        centre = 127.5 if name == "image" else 0.0
        errors[name] = float(np.linalg.norm(other - mine) / np.linalg.norm(mine - centre))
        if not errors[name] <= CHECK_LIMIT:
            failures.append(f"its {words} differ from ours by {errors[name]:.0%} (limit {CHECK_LIMIT:.0%})")
    return errors, failures


def peer_process(job: PeerJob, args: list[str], timeout: float, what: str) -> dict[str, Any]:
    """`python -m benchmarks.peer_process ARGS` under the peers' interpreter; its JSON, or PeerUnavailable."""
    # The peers read only local files: nothing is fetched from the hub.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run([str(job.python), "-m", "benchmarks.peer_process", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"{what} did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        logger.error("peers: %s failed (exit %d):\n%s", what, done.returncode, done.stderr[-4000:])
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no output")
        killed = " (killed: out of memory?)" if done.returncode < 0 else ""
        raise PeerUnavailable(f"{what} failed with exit code {done.returncode}{killed}: {last.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])
