"""The benchmark suite runs end to end (`python -m benchmarks --quick`), so it cannot rot."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.components import count_flops
from benchmarks.scale import linearity_notes
from tests.helpers import REPO

SECTION_HEADINGS = (
    "## Summary",
    "## Machine peak",
    "## Components",
    "## Baseline",
    "## End to end over HTTP",
    "## Cache hits",
    "## Scale",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--presets-dir", str(presets_dir)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    files = {path.suffix: path for path in out.iterdir()}
    assert set(files) == {".json", ".md", ".png"}, sorted(out.iterdir())
    assert all(path.stem.endswith("-quick") for path in files.values())
    return files


def test_quick_json_has_every_section(quick_run: dict[str, Path]) -> None:
    results = json.loads(quick_run[".json"].read_text())
    assert results["errors"] == {}
    assert results["command"].startswith("python -m benchmarks --quick")
    assert results["machine"]["cpu_model"] and results["machine"]["libraries"]["torch"]
    assert results["peak"]["fp32"]["gflops"] > 0

    rows = {(r["component"], r["backend"]): r for r in results["components"]}
    assert {"text_encoders", "unet_step", "vae_decode", "png_encode"} <= {c for c, _ in rows}
    for component in ("unet_step", "vae_decode"):
        row = rows[(component, "torch")]
        assert row["flops"] > 0 and row["seconds"]["min"] <= row["seconds"]["median"] <= row["seconds"]["max"]
        assert row["seconds"]["n"] == results["plan"]["component_repeats"]

    assert results["baseline"]["precision"] == "fp32" and results["baseline"]["seconds"]["median"] > 0

    misses = results["http"]["misses"]
    assert [level["concurrency"] for level in misses] == [1, 2, 4, 8]
    for level in misses:  # every miss is a new request, answered by the model
        assert level["ok"] == level["requests"] and level["x_cache"] == {"MISS": level["requests"]}
        assert level["latency_s"]["p50"] <= level["latency_s"]["p99"] <= level["latency_s"]["max"]
    (image_to_image,) = results["http"]["image_to_image"]  # beside text-to-image, each a new request
    assert image_to_image["ok"] == image_to_image["requests"] > 0 and image_to_image["x_cache"] == {"MISS": image_to_image["requests"]}
    for level in results["http"]["mixed"]:
        assert level["x_cache"].get("HIT", 0) == round(results["plan"]["mixed_requests"] * results["plan"]["mixed_hit_share"])

    hits = results["cache_hits"]["levels"]
    assert [level["concurrency"] for level in hits] == [1, 2, 4, 8]
    for level in hits:
        assert level["service"]["x_cache"] == {"HIT": results["plan"]["hit_requests"]}
        assert level["p50_ratio"] > 0 and level["bare_aiohttp"]["ok"] == results["plan"]["hit_requests"]

    assert {(r["steps"], r["size"]) for r in results["scale"]["rows"]} == {(1, 256), (2, 256), (4, 256), (1, 384)}
    summary = results["summary"]
    for key in ("baseline_s", "ours_http_s", "ours_http_over_baseline", "unet_fraction_of_peak",
                "vae_fraction_of_peak", "cache_hit_p50_ratio", "service_seconds_to_ready", "service_peak_rss_bytes"):
        assert key in summary, key
    assert summary["service_peak_rss_bytes"] > 50 * 2**20  # the service holds torch and a model
    assert summary["served_unet_s"] > 0 and summary["served_vae_s"] > 0  # the service's own /metrics


def test_quick_markdown_has_every_table(quick_run: dict[str, Path]) -> None:
    text = quick_run[".md"].read_text()
    for heading in SECTION_HEADINGS:
        assert heading in text, heading
    assert "| unet_step | torch | fp32 |" in text
    assert "## Errors" not in text


def test_quick_chart_is_a_png(quick_run: dict[str, Path]) -> None:
    with Image.open(quick_run[".png"]) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 400


def test_flop_count_includes_cpu_attention() -> None:
    """On the CPU, attention runs as a fused op FlopCounterMode does not know; our count must include it."""
    from engines.models.presets import build_tiny_components

    unet = build_tiny_components().unet
    inputs = (torch.randn(1, 4, 32, 32), torch.tensor([999.0]), torch.randn(1, 77, 64))
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}

    def forward(model: torch.nn.Module, device: str) -> None:
        sample, timestep, hidden = (t.to(device) for t in inputs)
        model(sample, timestep, encoder_hidden_states=hidden, added_cond_kwargs={k: v.to(device) for k, v in added.items()})

    with torch.inference_mode():
        counted = count_flops(lambda: forward(unet, "cpu"))
        with FlopCounterMode(display=False) as plain:
            forward(unet, "cpu")
        meta_unet = copy.deepcopy(unet).to("meta")  # on meta, attention decomposes into counted matmuls
        on_meta = count_flops(lambda: forward(meta_unet, "meta"))
    assert counted == on_meta > plain.get_total_flops()


def test_linearity_notes_call_out_growth() -> None:
    def row(steps: int, size: int, seconds: float) -> dict:
        return {"steps": steps, "size": size, "seconds": {"median": seconds}}

    linear_steps = [row(1, 512, 3.0), row(2, 512, 5.0), row(4, 512, 9.0)]
    superlinear_size = [row(1, 1024, 3.0 * 4 * 1.5)]
    notes = linearity_notes(linear_steps + superlinear_size, 512)
    assert len(notes) == 2
    assert notes[0].endswith(": linear") and "fixed 1 s + 2 s per step" in notes[0]
    assert "+50% per pixel" in notes[1] and notes[1].endswith("worse than linear in pixels")
    assert "not linear" in linearity_notes([row(1, 512, 3.0), row(2, 512, 5.0), row(4, 512, 15.0)], 512)[0]
