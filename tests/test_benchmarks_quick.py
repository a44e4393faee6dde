"""The benchmark suite runs end to end (`python -m benchmarks --quick`), so it cannot rot."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.cache_hits import goals, wrong_answers
from benchmarks.components import count_flops
from benchmarks.machine import machine_label
from benchmarks.peak import summarize_peak
from benchmarks.peers import CHECK_LIMIT, RUNS, peer_name
from benchmarks.plan import QUICK
from benchmarks.redis_server import REDIS_SERVER
from benchmarks.scale import linearity_notes
from benchmarks.suite import SECTIONS
from benchmarks.summary import in_process_engine, peak_is_wrong, warnings
from tests.helpers import REPO, run_quick_benchmark

SECTION_HEADINGS = (
    "## Summary",
    "## Machine peak",
    "## Components",
    "## Baseline and peers",
    "## End to end over HTTP",
    "## Cache hits",
    "## Two replicas sharing Redis",
    "## Scale",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path) -> dict[str, Path]:
    """A run as in a fresh clone: no build in --engine-dir, so the service serves with torch."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (make test installs it): the Redis tier and two replicas need it")
    no_build, peers = tmp_path_factory.mktemp("no-engines"), tmp_path_factory.mktemp("peers")
    # Every section but the fault run, which tests/test_faults.py drives itself (a minute of its own).
    sections = ",".join(name for name in SECTIONS if name != "faults")
    files = run_quick_benchmark(tmp_path_factory.mktemp("bench"), presets_dir, "--engine-dir", str(no_build), "--peers-dir", str(peers),
                                "--sections", sections)
    return {**files, "peers": peers}


def test_quick_json_has_every_section(quick_run: dict[str, Path]) -> None:
    results = json.loads(quick_run[".json"].read_text())
    assert results["errors"] == {}
    assert results["command"].startswith("python -m benchmarks --quick")
    assert results["machine"]["cpu_model"] and results["machine"]["libraries"]["torch"]
    assert results["peak"]["fp32"]["gflops"] > 0

    peak = results["peak"]["fp32"]
    assert {p["implementation"] for p in peak["probes"]} == {"torch", "openvino"}
    assert {p["matmul_size"] for p in peak["probes"]} == set(results["plan"]["peak_sizes"])
    assert peak["gflops_best"] == max(p["gflops_best"] for p in peak["probes"]) and peak["gflops_after"] > 0
    assert peak["nominal"]["flops_per_cycle"] > 0 and results["bandwidth"]["bytes_per_second"] > 1e8

    rows = {(r["component"], r["backend"]): r for r in results["components"]}
    assert {"text_encoders", "unet_step", "vae_decode", "png_encode"} <= {c for c, _ in rows}
    runners = {"openvino": ("OpenVINORunner",) * 2, "onnxruntime": ("OnnxRuntimeRunner",) * 2, "torch": ("TorchUNet", "TorchVAEDecoder")}
    for i, component in enumerate(("unet_step", "vae_decode")):
        for backend in ("torch", "openvino", "onnxruntime"):  # every backend present, none skipped
            row = rows[(component, backend)]
            assert row["runner"] == runners[backend][i]  # the class its engine serves with
            assert row["flops"] > 0 and row["seconds"]["min"] <= row["seconds"]["median"] <= row["seconds"]["max"]
            assert row["seconds"]["n"] == results["plan"]["component_repeats"]
            assert row["bytes"] > 0 and row["bandwidth_bytes_per_second"] > 0
    assert not [note for note in results["notes"] if "hook" in note]

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

    tiers = results["cache_hits"]["tiers"]
    assert [(t["name"], t["tier"]) for t in tiers] == [
        ("memory", "memory"), ("disk", "disk"), ("redis", "redis"), ("redis, refilling disk", "redis")]
    for tier in tiers:  # every hit came from the tier its row is about
        assert [level["concurrency"] for level in tier["levels"]] == [1, 2, 4, 8]
        for level in tier["levels"]:
            requests = results["plan"]["hit_requests"]
            assert level["service"]["x_cache"] == {"HIT": requests}
            assert level["service"]["x_cache_tier"] == {tier["tier"]: requests}
            assert "wrong_answers" not in level and level["bare_aiohttp"]["ok"] == requests
            assert level["p50_ratio"] > 0 and level["per_second_ratio"] > 0
    for tier in tiers[2:]:
        args = tier["service_args"]
        assert args[args.index("--memory-cache-size") + 1] == "0" and "--cache-url" in args
    assert [g["met"] is not None for g in results["cache_hits"]["goals"]] == [True] * 5

    replicas = results["replicas"]
    assert replicas["ok"] == replicas["requests"] == QUICK.replica_prompts * QUICK.replica_copies
    assert replicas["images_per_unique_request"] == replicas["engine_calls_per_unique_request"] == 1.0
    assert replicas["met"] and replicas["x_cache"].get("MISS") == QUICK.replica_prompts
    assert all(r["requests"] == replicas["requests"] // 2 for r in replicas["per_replica"])

    assert {(r["steps"], r["size"]) for r in results["scale"]["rows"]} == {(1, 256), (2, 256), (4, 256), (1, 384)}
    # Without a build the service serves with torch, and the in-process figures are that same engine.
    assert results["service"]["engine"] == results["scale"]["engine"] == results["summary"]["in_process_engine"] == "torch-cpu-fp32"
    assert "auto: not TensorRT" in results["scale"]["engine_reason"]
    assert any(p.get("sections") == ["scale"] and p["peak_rss_bytes"] > 0 for p in results["processes"])
    summary = results["summary"]
    for key in ("baseline_s", "ours_http_s", "ours_http_over_baseline", "unet_fraction_of_peak",
                "vae_fraction_of_peak", "cache_hit_p50_ratio", "service_seconds_to_ready", "service_peak_rss_bytes",
                "cache_goals_met", "replicas_images_per_unique_request"):
        assert key in summary, key
    assert summary["service_peak_rss_bytes"] > 50 * 2**20  # the service holds torch and a model
    assert summary["served_unet_s"] > 0 and summary["served_vae_s"] > 0  # the service's own /metrics


def test_quick_run_times_every_peer_on_our_weights(quick_run: dict[str, Path]) -> None:
    """Each peer ran under the peers' pins, made a 256x256 image, and passed the weight check (which
    tests/test_peers.py shows failing on other weights); the fastest is in the headline."""
    results = json.loads(quick_run[".json"].read_text())
    peers, plan = results["peers"], results["plan"]
    assert [(row["peer"], row["weights"]) for row in peers["rows"]] == list(RUNS)
    lines = (REPO / "constraints" / "peers.txt").read_text().splitlines()
    pinned = dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    for row in peers["rows"]:
        assert "not_measured" not in row, row["not_measured"]
        assert row["check"]["passed"] and all(0 <= error <= CHECK_LIMIT for error in row["check"]["errors"].values())
        assert row["image_shape"] == [plan["size"], plan["size"], 3]
        assert row["seconds"]["n"] == plan["peer_repeats"] and 0 < row["seconds"]["min"] <= row["seconds"]["median"]
        assert row["libraries"]["optimum-intel"] == pinned["optimum-intel"] and row["libraries"]["transformers"] == pinned["transformers"]
    # The int8 export holds the UNet's weights in 8 bits; the fp16 export none.
    exported = quick_run["peers"] / "tiny" / "openvino"
    assert 'element_type="u8"' in (exported / "int8" / "unet" / "openvino_model.xml").read_text()
    assert 'element_type="u8"' not in (exported / "fp16" / "unet" / "openvino_model.xml").read_text()

    summary = results["summary"]
    fastest = min(peers["rows"], key=lambda row: row["seconds"]["median"])
    assert (summary["peer_s"], summary["peer_name"]) == (fastest["seconds"]["median"], fastest["name"])
    assert summary["ours_http_over_peer"] == summary["ours_http_s"] / summary["peer_s"]
    assert summary["ours_in_process_over_peer"] == summary["ours_in_process_s"] / summary["peer_s"]


def test_quick_markdown_has_every_table(quick_run: dict[str, Path]) -> None:
    text = quick_run[".md"].read_text()
    first_line_after_title = text.splitlines()[2]
    assert first_line_after_title.startswith("> **QUICK RUN") and "measures nothing about speed" in first_line_after_title
    assert "| unet_step | openvino | fp32 |" in text and "| vae_decode | onnxruntime | fp32 |" in text
    assert "nominal fp32 peak:" in text and "memory bandwidth" in text
    for heading in SECTION_HEADINGS:
        assert heading in text, heading
    assert "| unet_step | torch | fp32 |" in text
    assert "| baseline: diffusers StableDiffusionXLPipeline | fp32 |" in text
    for peer, weights in RUNS:
        assert f"| {peer_name(peer, weights)} |" in text
    assert "| fastest peer: " in text and "| ours over HTTP / fastest peer |" in text and "| ours in process / fastest peer |" in text
    assert "our time per image in process (torch-cpu-fp32, 256x256, 1 step, no HTTP)" in text
    assert "## Scale (in process, torch-cpu-fp32)" in text and "TWO ENGINES" not in text
    rows = (("memory", "memory"), ("disk", "disk"), ("redis", "redis"), ("redis, refilling disk", "redis"))
    for name, tier in rows:  # a row per tier and level, with the tier its hits came from
        for concurrency in (1, 2, 4, 8):
            assert f"| {name} | {concurrency} | 100 | {tier} 100 |" in text, (name, concurrency)
    assert "| memory-tier hits/s / bare | at least 0.90 |" in text and "| Redis-tier p50 - disk-tier p50 | at most 1 ms |" in text
    assert "Images made per unique request: **1.00**" in text
    assert "## Errors" not in text and "PEER NOT MEASURED" not in text


def test_given_an_openvino_build_the_in_process_figures_run_the_engine_the_service_serves(
    openvino_quick_run: dict[str, Path], openvino_engines: Path
) -> None:
    """With `--engine-dir` holding a --target cpu build, the service serves OpenVINO, and the scale
    table, whose 1-step cell is "ours in process", runs that same engine in process, named as the
    service names it (/readyz, X-Engine)."""
    results = json.loads(openvino_quick_run[".json"].read_text())
    assert results["errors"] == {}
    served = results["service"]["engine"]
    assert served.startswith("openvino-cpu-f32-text-ov") and served.endswith("-static-512x512")
    assert results["scale"]["engine"] == results["summary"]["in_process_engine"] == served
    assert str(openvino_engines) in results["scale"]["engine_reason"]
    assert {(r["steps"], r["size"]) for r in results["scale"]["rows"]} == {(1, 256), (2, 256), (4, 256), (1, 384)}
    text = openvino_quick_run[".md"].read_text()
    assert f"our time per image in process ({served}, 256x256, 1 step, no HTTP)" in text
    assert f"our time per image over HTTP ({served}," in text
    assert f"## Scale (in process, {served})" in text and "TWO ENGINES" not in text


def test_in_process_figures_on_another_engine_than_the_service_are_flagged() -> None:
    scale = {"engine": "torch-cpu-bf16", "rows": []}
    found = warnings(_results(scale=scale, service={"engine": "openvino-cpu-bf16"}))
    assert found == ["TWO ENGINES: the in-process figures ran on torch-cpu-bf16, the service on openvino-cpu-bf16: they do not compare"]
    assert warnings(_results(scale={**scale, "engine": "openvino-cpu-bf16"}, service={"engine": "openvino-cpu-bf16"})) == []
    # A result written before the scale table named its engine: it ran on the torch pipeline.
    assert in_process_engine({"scale": {"rows": []}, "service_precision": "bf16"}) == "torch bf16"


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


def test_machine_label_drops_trade_marks_and_filler() -> None:
    assert machine_label({"cpu_model": "Intel(R) Xeon(R) Processor", "usable_cpus": 2}) == "intel-xeon-2c"
    assert machine_label({"cpu_model": "AMD EPYC 7B13 64-Core Processor", "usable_cpus": 2}) == "amd-epyc-7b13-2c"
    assert machine_label({"cpu_model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "usable_cpus": 4}) == "intel-xeon-platinum-8481c-4c"


def _results(**overrides: object) -> dict:
    results = {
        "plan": {"name": "cpu-full"},
        "machine": {"usable_cpus": 2, "load_average_at_start": (0.5, 0.5, 0.5), "load_average_at_end": (1.0, 1.0, 1.0)},
        "peak": {"fp32": {**summarize_peak({"torch@1024": [0.02]}, {"torch@1024": [0.021]}), "nominal": {"gflops": 300.0}}},
        "components": [],
    }
    results.update(overrides)
    return results


def test_a_quiet_full_run_has_no_warnings() -> None:
    assert warnings(_results()) == []


def test_warnings_flag_a_quick_run_first_a_busy_machine_and_drifting_probes() -> None:
    drifting = {"fp32": summarize_peak({"torch@1024": [0.02]}, {"torch@1024": [0.03]})}
    busy = {"usable_cpus": 2, "load_average_at_start": (2.5, 1.0, 1.0), "load_average_at_end": None}
    found = warnings(_results(plan={"name": "quick"}, machine=busy, peak=drifting))
    assert found[0].startswith("QUICK RUN") and "measures nothing about speed" in found[0]
    assert any(w.startswith("BUSY MACHINE") and "2.50 on 2 cores" in w for w in found)
    assert any(w.startswith("UNSTEADY MACHINE") and "33% apart" in w for w in found)


def test_a_component_above_the_peak_marks_the_peak_wrong() -> None:
    peak_gflops = 2 * 1024**3 / 0.02 / 1e9
    row = {"component": "vae_decode", "backend": "openvino", "precision": "fp32", "seconds": {"median": 1.0},
           "flops": int(1.13 * peak_gflops * 1e9), "peak_gflops": peak_gflops}
    reasons = peak_is_wrong(_results(components=[row]))
    assert len(reasons) == 1 and "113%" in reasons[0] and "probes missed a faster kernel" in reasons[0]
    assert any(w.startswith("PEAK IS WRONG") for w in warnings(_results(components=[row])))
    above_nominal = _results()
    above_nominal["peak"]["fp32"]["nominal"]["gflops"] = 10.0
    assert "exceeds the nominal" in peak_is_wrong(above_nominal)[0]


def test_hits_from_another_tier_get_no_figure_and_a_warning() -> None:
    def level(tier: str, concurrency: int, answered: dict) -> dict:
        service = {"requests": 4, "x_cache": {"HIT": 4}, "x_cache_tier": answered, "latency_s": {"p50": 0.001}}
        wrong = wrong_answers(service, tier)
        figures = {"wrong_answers": wrong} if wrong else {"p50_ratio": 1.0, "per_second_ratio": 1.0}
        return {"concurrency": concurrency, "service": service, **figures}

    mixed = level("redis", 2, {"redis": 1, "disk": 3})
    assert "disk" in mixed["wrong_answers"] and "p50_ratio" not in mixed
    tiers = [{"name": "disk", "tier": "disk", "levels": [level("disk", c, {"disk": 4}) for c in (1, 2)]},
             {"name": "redis", "tier": "redis", "levels": [level("redis", 1, {"redis": 4}), mixed]}]
    judged = {g["figure"]: g["met"] for g in goals(tiers, replace(QUICK, hit_concurrency=(1, 2)))}
    assert judged["disk-tier hits/s / bare"] is True
    assert judged["Redis-tier p50 - disk-tier p50"] is None and judged["memory-tier hits/s / bare"] is None  # no verdict without figures
    found = warnings(_results(cache_hits={"tiers": tiers}))
    assert [w for w in found if w.startswith("WRONG TIER: redis hits at concurrency 2") and "disk" in w]
