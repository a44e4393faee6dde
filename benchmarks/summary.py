"""The headline figures of a run, derived from its raw measurements: ours against the baseline,
fraction of peak, the memory-tier hit ratio, the cache goals. The JSON holds both; the Markdown and the chart read both.
"""

from __future__ import annotations

from typing import Any


def component_rates(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each component row with its achieved GFLOP/s (at its median time), that as a fraction of the
    peak measured beside it (the best matmul run in its precision, in the same process), and its two
    floors: FLOPs at that peak, bytes at the measured bandwidth."""
    rows = []
    for row in results.get("components", []):
        row = dict(row)
        median = row["seconds"]["median"]
        if row.get("flops"):
            row["gflops"] = row["flops"] / median / 1e9
            if row.get("peak_gflops"):
                row["fraction_of_peak"] = row["gflops"] / row["peak_gflops"]
                row["compute_floor_s"] = row["flops"] / row["peak_gflops"] / 1e9
        if row.get("bytes") and row.get("bandwidth_bytes_per_second"):
            row["memory_floor_s"] = row["bytes"] / row["bandwidth_bytes_per_second"]
        floors = [row[k] for k in ("compute_floor_s", "memory_floor_s") if k in row]
        if floors:
            row["floor_s"] = max(floors)
            row["time_over_floor"] = median / row["floor_s"]
        rows.append(row)
    return rows


def peak_is_wrong(results: dict[str, Any]) -> list[str]:
    """Why the measured peak cannot be a ceiling: a component ran faster than it, or it exceeds what
    the processor can do at all. Each is a fault of the peak, never a result."""
    reasons = []
    for row in component_rates(results):
        if row.get("fraction_of_peak", 0) > 1:
            reasons.append(
                f"{row['component']} on {row['backend']} {row['precision']} ran at {row['fraction_of_peak']:.0%} "
                f"of the measured {row['precision']} peak: the probes missed a faster kernel"
            )
    for precision, peak in results.get("peak", {}).items():
        nominal = (peak.get("nominal") or {}).get("gflops")
        if nominal and peak["gflops_best"] > nominal:
            reasons.append(
                f"the measured {precision} peak {peak['gflops_best']:.0f} GFLOP/s exceeds the nominal {nominal:.0f} "
                "(a clock above the stated one, or a wrong FLOP count)"
            )
    return reasons


def warnings(results: dict[str, Any]) -> list[str]:
    """What a reader must know before any figure: each one says why the figures may mislead."""
    out = []
    if results["plan"]["name"] == "quick":
        out.append("QUICK RUN: the tiny model at a small size; it measures nothing about speed, only that the suite works")
    if results["machine"].get("isa_cap"):
        out.append(
            f"ISA CAPPED: this processor ran as one with {results['machine']['isa_cap']} at most "
            f"(ONEDNN_MAX_CPU_ISA, OV_CPU_MAX_ISA, MKL_ENABLE_INSTRUCTIONS): its kernels, not its caches or memory"
        )
    cores = results["machine"].get("usable_cpus") or 1
    loads = [results["machine"].get(k) for k in ("load_average_at_start", "load_average_at_end")]
    loads += [p.get("load_average_at_end") for p in results.get("processes", [])]
    busiest = max((load[0] for load in loads if load), default=None)
    if busiest is not None and busiest > cores:
        out.append(f"BUSY MACHINE: the 1-minute load average reached {busiest:.2f} on {cores} cores; other work shared them")
    for precision, peak in results.get("peak", {}).items():
        if peak.get("drifted"):
            out.append(
                f"UNSTEADY MACHINE: the best {precision} matmul probe read {peak['gflops_before']:.0f} GFLOP/s before the "
                f"components and {peak['gflops_after']:.0f} after ({peak['drift']:.0%} apart): figures from this run do not compare"
            )
    out += [f"PEAK IS WRONG: {reason}" for reason in peak_is_wrong(results)]
    served = results.get("service", {}).get("engine")
    if served and results.get("scale") and in_process_engine(results) != served:
        out.append(f"TWO ENGINES: the in-process figures ran on {in_process_engine(results)}, the service on {served}: they do not compare")
    out += [f"PEER NOT MEASURED: {row['name']}: {row['not_measured']}" for row in peer_rows(results) if "not_measured" in row]
    for tier in results.get("cache_hits", {}).get("tiers", []):
        for level in tier.get("levels", []):
            if "wrong_answers" in level:
                out.append(f"WRONG TIER: {tier['name']} hits at concurrency {level['concurrency']}: "
                           f"{level['wrong_answers']}; no figure is given for them")
    return out


def in_process_engine(results: dict[str, Any]) -> str:
    """The engine the scale table, and so "ours in process", ran on; runs from before the table named
    its engine ran it on the torch pipeline in the service's precision."""
    return results.get("scale", {}).get("engine") or f"torch {results.get('service_precision', '')}".strip()


def peer_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return results.get("peers", {}).get("rows", [])


def fastest_peer(results: dict[str, Any]) -> dict[str, Any] | None:
    """The measured peer with the lowest median time per image; None when none was measured."""
    measured = [row for row in peer_rows(results) if "seconds" in row]
    return min(measured, key=lambda row: row["seconds"]["median"], default=None)


def fastest_float_peer(results: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest measured peer with float (fp16) weights: what our float build is held against."""
    measured = [row for row in peer_rows(results) if "seconds" in row and row.get("weights") == "fp16"]
    return min(measured, key=lambda row: row["seconds"]["median"], default=None)


GiB = 2**30
# Issue 22's goals for the CPU path: (name, summary key, limit, what the limit is).
CPU_GOALS = (
    ("int8 over HTTP / the fastest peer (int8-weight peers included)", "ours_int8_http_over_peer", 0.75, "ratio"),
    ("float over HTTP / the fastest peer with float weights", "ours_http_over_float_peer", 0.9, "ratio"),
    ("int8 step of the build (calibration, quantization, image check)", "int8_build_s", 20 * 60, "seconds"),
    ("build process peak resident after the int8 step", "int8_build_peak_rss_bytes", 12e9, "bytes"),
    ("float service peak resident", "service_peak_rss_bytes", 6 * GiB, "bytes"),
    ("int8 service peak resident", "int8_service_peak_rss_bytes", 4 * GiB, "bytes"),
    ("float service start to /readyz (compiled blobs cached)", "service_seconds_to_ready", 15, "seconds"),
)


def cpu_goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each CPU goal with its measured value and whether it is met; a goal whose figure is missing is left out."""
    return [{"goal": goal, "key": key, "limit": limit, "unit": unit, "value": summary[key], "met": summary[key] <= limit}
            for goal, key, limit, unit in CPU_GOALS if summary.get(key) is not None]


def service_backend(results: dict[str, Any]) -> str | None:
    """The backend the service served with, read from its engine name ("openvino-cpu-f32" -> "openvino")."""
    engine = results.get("service", {}).get("engine")
    return engine.split("-", 1)[0] if engine else None


def _level(levels: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((level for level in levels if level["concurrency"] == concurrency), None)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Flat headline figures; a figure whose section did not run is absent."""
    summary: dict[str, Any] = {}
    baseline = results.get("baseline")
    if baseline:
        summary["baseline_s"] = baseline["seconds"]["median"]
    misses = _level(results.get("http", {}).get("misses", []), 1)
    if misses and "latency_s" in misses:
        summary["ours_http_s"] = misses["latency_s"]["p50"]
    size = results["plan"]["size"]
    one_step = [r for r in results.get("scale", {}).get("rows", []) if r["steps"] == 1 and r["size"] == size]
    if one_step:
        summary["ours_in_process_s"] = one_step[0]["seconds"]["median"]
        summary["in_process_engine"] = in_process_engine(results)
    int8 = results.get("int8", {})
    if "latency_s" in int8.get("misses", {}):
        summary["ours_int8_http_s"] = int8["misses"]["latency_s"]["p50"]
    for name, peer in (("peer", fastest_peer(results)), ("float_peer", fastest_float_peer(results))):
        if peer:
            summary[f"{name}_s"], summary[f"{name}_name"] = peer["seconds"]["median"], peer["name"]
    for versus in ("baseline", "peer", "float_peer"):
        for ours in ("ours_http", "ours_int8_http", "ours_in_process"):
            if f"{ours}_s" in summary and f"{versus}_s" in summary:
                summary[f"{ours}_over_{versus}"] = summary[f"{ours}_s"] / summary[f"{versus}_s"]
    build = int8.get("build", {})
    for key, value in (("int8_psnr_db", build.get("quality", {}).get("psnr_db")), ("int8_build_s", build.get("seconds")),
                       ("int8_build_peak_rss_bytes", build.get("peak_rss_bytes")),
                       ("int8_service_peak_rss_bytes", int8.get("peak_rss_bytes")),
                       ("int8_service_seconds_to_ready", int8.get("seconds_to_ready")), ("int8_engine", int8.get("engine"))):
        if value is not None:
            summary[key] = value
    service_precision = results.get("service_precision")
    headline = {"unet_step": "unet", "vae_decode": "vae"}
    served = service_backend(results)
    backends = {r["backend"] for r in results.get("components", [])}
    backend = served if served in backends else "torch"  # the engine the service serves with, where it was timed
    for row in component_rates(results):
        name = headline.get(row["component"])
        if name and row["backend"] == backend and row["run_precision"] == service_precision and "fraction_of_peak" in row:
            summary[f"{name}_fraction_of_peak"] = row["fraction_of_peak"]
            summary[f"{name}_precision"] = row["precision"]
            summary[f"{name}_backend"] = backend
            if "time_over_floor" in row:
                summary[f"{name}_time_over_floor"] = row["time_over_floor"]
    summary["warnings"] = warnings(results)
    cache_hits = results.get("cache_hits", {})
    memory = next((t for t in cache_hits.get("tiers", []) if t["name"] == "memory"), {})
    first = next((level for level in memory.get("levels", []) if "p50_ratio" in level), None)
    if first:
        summary["cache_hit_p50_ratio"] = first["p50_ratio"]
        summary["cache_hit_per_second_ratio"] = first["per_second_ratio"]
        summary["cache_hit_concurrency"] = first["concurrency"]
    if cache_hits.get("goals"):
        summary["cache_goals_met"] = sum(goal["met"] is True for goal in cache_hits["goals"])
        summary["cache_goals"] = len(cache_hits["goals"])
    if "replicas" in results:
        summary["replicas_images_per_unique_request"] = results["replicas"]["images_per_unique_request"]
    service = results.get("service", {})
    if service.get("engine"):
        summary["service_engine"] = service["engine"]
    for stage, seconds in service.get("stages_s", {}).items():
        summary[f"served_{stage}_s"] = seconds
    for key in ("seconds_to_ready", "peak_rss_bytes"):
        if service.get(key) is not None:
            summary[f"service_{key}"] = service[key]
    if results["device"] == "cpu":
        summary["cpu_goals"] = cpu_goals(summary)
    return summary
