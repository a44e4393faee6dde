"""The headline figures of a run, derived from its raw measurements: ours against the baseline,
fraction of peak, the cache-hit ratio. The JSON holds both; the Markdown and the chart read both.
"""

from __future__ import annotations

from typing import Any


def component_rates(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each component row with its achieved GFLOP/s (at its median time) and that as a fraction of the
    peak measured beside it (the best matmul run in its precision, in the same process)."""
    rows = []
    for row in results.get("components", []):
        row = dict(row)
        if row.get("flops"):
            row["gflops"] = row["flops"] / row["seconds"]["median"] / 1e9
            if row.get("peak_gflops"):
                row["fraction_of_peak"] = row["gflops"] / row["peak_gflops"]
        rows.append(row)
    return rows


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
    for ours, ratio in (("ours_http_s", "ours_http_over_baseline"), ("ours_in_process_s", "ours_in_process_over_baseline")):
        if ours in summary and "baseline_s" in summary:
            summary[ratio] = summary[ours] / summary["baseline_s"]
    service_precision = results.get("service_precision")
    headline = {"unet_step": "unet", "vae_decode": "vae"}
    for row in component_rates(results):
        # The service's own numerics: PyTorch, in the precision it picks here.
        name = headline.get(row["component"])
        if name and row["backend"] == "torch" and row["run_precision"] == service_precision and "fraction_of_peak" in row:
            summary[f"{name}_fraction_of_peak"] = row["fraction_of_peak"]
            summary[f"{name}_precision"] = row["precision"]
    hits = results.get("cache_hits", {}).get("levels", [])
    first = hits[0] if hits else None
    if first and "p50_ratio" in first:
        summary["cache_hit_p50_ratio"] = first["p50_ratio"]
        summary["cache_hit_per_second_ratio"] = first["per_second_ratio"]
        summary["cache_hit_concurrency"] = first["concurrency"]
    service = results.get("service", {})
    if service.get("engine"):
        summary["service_engine"] = service["engine"]
    for stage, seconds in service.get("stages_s", {}).items():
        summary[f"served_{stage}_s"] = seconds
    for key in ("seconds_to_ready", "peak_rss_bytes"):
        if service.get(key) is not None:
            summary[f"service_{key}"] = service[key]
    return summary
