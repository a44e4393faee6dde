"""The results of a run, three ways: a JSON file for programs, a Markdown table for people, a PNG chart (chart.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.chart import chart
from benchmarks.peers import CHECKED
from benchmarks.summary import component_rates, in_process_engine, peak_is_wrong, peer_rows

# --- formatting ------------------------------------------------------------------------------------


def fmt_s(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_stats(stats: dict[str, Any]) -> str:
    return f"{fmt_s(stats['median'])} [{fmt_s(stats['min'])} – {fmt_s(stats['max'])}]"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


# --- Markdown --------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The whole report: a header on the machine and the command, the summary, then one table per section."""
    out = _header(results) + ["## Summary", ""] + table(["figure", "value"], _summary_rows(results))
    for section in (_cpu_goals, _peak, _components, _baseline_and_peers, _http, _int8, _cache_hits, _replicas, _faults, _scale):
        out += section(results)
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {note}" for note in results["notes"]] + [""]
    if results.get("errors"):
        out += ["## Errors", ""] + [f"- {name}: {text.splitlines()[0]}" for name, text in results["errors"].items()] + [""]
    return "\n".join(out)


def _header(results: dict[str, Any]) -> list[str]:
    machine, plan = results["machine"], results["plan"]
    gpu = machine["gpu"]["name"] if machine.get("gpu") else "none"
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items() if version)
    engine = results.get("service", {}).get("engine") or "–"
    warnings = results["summary"].get("warnings", [])
    return [
        f"# Benchmark: `{results['model']}` on {results['machine_label']}",
        "",
        *[f"> **{warning}**  " for warning in warnings],
        *([""] if warnings else []),
        f"Command: `{results['command']}`  ",
        f"Started {results['started']}, took {results['duration_s']:.0f} s, plan `{plan['name']}`, "
        f"device {results['device']}, service engine `{engine}`.  ",
        f"CPU: {machine['cpu_model']}, {machine['usable_cpus']} usable cores, flags {' '.join(machine['cpu_simd_flags'])}; "
        f"GPU: {gpu}; memory {fmt_bytes(machine['memory_bytes'])}; load average (1, 5, 15 min) at start "
        f"{_load(machine.get('load_average_at_start'))}, at end {_load(machine.get('load_average_at_end'))}.  ",
        f"Libraries: {libraries}.",
        "",
        "Every time is a median over repeats after warm-up, [min – max] where shown.",
        "",
    ]


def _summary_rows(results: dict[str, Any]) -> list[list[str]]:
    summary, size = results["summary"], results["plan"]["size"]
    rows = []
    if "ours_http_s" in summary:
        engine = summary.get("service_engine", "the service")
        label = f"our time per image over HTTP ({engine}, {size}x{size}, 1 step, p50 at concurrency 1)"
        rows.append([label, fmt_s(summary["ours_http_s"])])
    if "ours_in_process_s" in summary:
        label = f"our time per image in process ({in_process_engine(results)}, {size}x{size}, 1 step, no HTTP)"
        rows.append([label, fmt_s(summary["ours_in_process_s"])])
    if "ours_int8_http_s" in summary:
        label = f"our time per image over HTTP, int8 build ({summary.get('int8_engine', 'int8')}, p50 at concurrency 1)"
        rows.append([label, fmt_s(summary["ours_int8_http_s"])])
    if "peer_s" in summary:
        rows.append([f"fastest peer: {summary['peer_name']}, per image", fmt_s(summary["peer_s"])])
    if "float_peer_s" in summary and summary["float_peer_name"] != summary.get("peer_name"):
        rows.append([f"fastest peer with float weights: {summary['float_peer_name']}, per image", fmt_s(summary["float_peer_s"])])
    if "baseline_s" in summary:
        rows.append([f"{results['baseline']['name']}, {results['baseline']['precision']}, per image", fmt_s(summary["baseline_s"])])
    for versus, words in (("peer", "the fastest peer"), ("float_peer", "the fastest float peer"), ("baseline", "the baseline")):
        for ours, label in (("ours_http", "ours over HTTP"), ("ours_int8_http", "ours int8 over HTTP"),
                            ("ours_in_process", "ours in process")):
            if f"{ours}_over_{versus}" in summary:
                ratio = summary[f"{ours}_over_{versus}"]
                verdict = f"{1 / ratio:.1f}x faster than" if ratio < 1 else f"{ratio:.1f}x slower than"
                rows.append([f"{label} / {words.removeprefix('the ')}", f"{ratio:.2f}: {verdict} {words}"])
    wrong = bool(peak_is_wrong(results))
    for name, component in (("unet", "unet_step"), ("vae", "vae_decode")):
        if f"{name}_fraction_of_peak" in summary:
            precision, backend = summary[f"{name}_precision"], summary[f"{name}_backend"]
            label = f"{component}, {backend} {precision}: fraction of the measured {precision} matmul peak"
            value = fmt_pct(summary[f"{name}_fraction_of_peak"]) + (" (the peak is wrong, see the top)" if wrong else "")
            rows.append([label, value])
        if f"{name}_time_over_floor" in summary:
            label = f"{component}, {summary[f'{name}_backend']}: time over its floor (the larger of compute and memory)"
            rows.append([label, f"{summary[f'{name}_time_over_floor']:.2f}x"])
    if "cache_hit_p50_ratio" in summary:
        versus = f"service / bare aiohttp (concurrency {summary['cache_hit_concurrency']})"
        rows.append([f"memory-tier hit p50 latency, {versus}", f"{summary['cache_hit_p50_ratio']:.2f}x"])
        rows.append([f"memory-tier hits per second, {versus}", f"{summary['cache_hit_per_second_ratio']:.2f}"])
    if "cache_goals" in summary:
        rows.append(["cache tiers: issue 24's goals met (see Cache hits)", f"{summary['cache_goals_met']} of {summary['cache_goals']}"])
    if "replicas_images_per_unique_request" in summary:
        label = "two replicas sharing Redis: images made per unique request (goal: exactly 1)"
        rows.append([label, f"{summary['replicas_images_per_unique_request']:.2f}"])
    served = [s for s in ("text_encoders", "unet", "vae", "image_encoding") if f"served_{s}_s" in summary]
    if served:
        label = "inside the service, mean per cache miss: " + ", ".join(served)
        rows.append([label, ", ".join(fmt_s(summary[f"served_{s}_s"]) for s in served)])
    if "service_seconds_to_ready" in summary:
        label = "service: process start to /readyz 200 (load + warm-up image)"
        rows.append([label, fmt_s(summary["service_seconds_to_ready"])])
    if "service_peak_rss_bytes" in summary:
        rows.append(["service: peak resident memory", fmt_bytes(summary["service_peak_rss_bytes"])])
    memory = results.get("service", {}).get("memory_at_end_bytes", {})
    if "RssAnon" in memory and "RssFile" in memory:
        label = "service at the end: its own memory (RssAnon) + mapped files (RssFile, reclaimable)"
        rows.append([label, f"{fmt_bytes(memory['RssAnon'])} + {fmt_bytes(memory['RssFile'])}"])
    return rows


def _peak(results: dict[str, Any]) -> list[str]:
    if not results.get("peak"):
        return []
    rows = []
    for precision, peak in results["peak"].items():
        for p in peak.get("probes", []):
            after = p.get("gflops_after")
            rows.append([
                precision, p["implementation"], str(p["matmul_size"]), str(p["seconds"]["n"]),
                f"{p['gflops']:.0f} [{p['gflops_min']:.0f} – {p['gflops_best']:.0f}]",
                f"{p['gflops_before']:.0f} / {after:.0f}" if after else "–",
                "**the peak**" if (p["implementation"], p["matmul_size"]) == (peak["implementation"], peak["matmul_size"]) else "",
            ])
    header = ["precision", "implementation", "n", "runs", "GFLOP/s median [min – max]", "best before / after", ""]
    intro = ("Square matrix products by every implementation at hand, timed just before and just after the components, "
             "in the same process; the peak a component divides by is the best single run of any of them.")
    out = ["## Machine peak (square matmul, same run)", "", intro, ""] + table(header, rows)
    for precision, peak in results["peak"].items():
        nominal = peak.get("nominal")
        if nominal:
            value = "unknown (no clock: " + nominal["clock_source"] + ")" if nominal["gflops"] is None else (
                f"{nominal['gflops']:.0f} GFLOP/s = {nominal['cores']} cores x {nominal['units']} x "
                f"{nominal['clock_ghz']:.2f} GHz ({nominal['clock_source']})")
            share = f"; the measured peak is {peak['gflops_best'] / nominal['gflops']:.0%} of it" if nominal["gflops"] else ""
            out.append(f"- nominal {precision} peak: {value}{share}")
    bandwidth = results.get("bandwidth")
    if bandwidth:
        out.append(f"- memory bandwidth (a {fmt_bytes(bandwidth['bytes'] // 2)} copy, best run): "
                   f"{bandwidth['bytes_per_second'] / 1e9:.1f} GB/s")
    return out + [""]


def _components(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["component"], r["backend"], r["precision"], r["runner"], fmt_stats(r["seconds"]),
            f"{r['flops'] / 1e9:.4g}" if r.get("flops") else "–",
            f"{r['gflops']:.3g}" if "gflops" in r else "–",
            fmt_pct(r.get("fraction_of_peak")) + (" (peak wrong)" if r.get("fraction_of_peak", 0) > 1 else ""),
            fmt_bytes(r.get("bytes")),
            f"{fmt_s(r.get('compute_floor_s'))} / {fmt_s(r.get('memory_floor_s'))}",
            f"{r['time_over_floor']:.2f}x" if "time_over_floor" in r else "–",
        ]
        for r in component_rates(results)
    ]
    if not rows:
        return []
    size = results["plan"]["size"]
    header = ["component", "backend", "precision", "runner", "time", "GFLOP", "GFLOP/s (median)", "of peak", "bytes moved",
              "floor: compute / memory", "time / floor"]
    intro = ("Floors: the FLOPs at the peak above, and the bytes (weights read once, every layer's output written and "
             "read once) at the measured bandwidth; a component cannot beat the larger of the two.")
    files = [  # a build's file by path and key; a file made in this run lived in a temporary directory
        f"- {r['component']} on {r['backend']} {r['precision']}: "
        + (f"`{r['files']['path']}` (manifest key {r['files']['key'].removeprefix('sha256:')[:12]}), " if r["files"]["key"] else "")
        + r["files"]["source"]
        for r in results["components"] if r.get("files")
    ]
    return [f"## Components ({size}x{size}, batch 1)", "", intro, ""] + table(header, rows) + files + ([""] if files else [])


def _baseline_and_peers(results: dict[str, Any]) -> list[str]:
    """The baseline and the peers in one table, each under the name the summary and the chart give it."""
    b, peers = results.get("baseline"), results.get("peers")
    if not b and not peers:
        return []
    rows = []
    if b:
        rows.append([b["name"], b["precision"], fmt_stats(b["seconds"]), "–", "–", "ours (the same modules)"])
    for row in peer_rows(results):
        errors = row.get("check", {}).get("errors", {})
        agreement = ", ".join("–" if errors.get(name) is None else f"{errors[name]:.1%}" for name in CHECKED) if errors else "–"
        if "seconds" in row:
            rows.append([row["name"], row["compute_precision"], fmt_stats(row["seconds"]), fmt_s(row["load_seconds"]),
                         fmt_bytes(row["peak_rss_bytes"]), agreement])
        else:
            rows.append([row["name"], "–", f"**not measured**: {row['not_measured']}", "–", "–", agreement])
    size = b["size"] if b else peers["size"]
    header = ["pipeline", "computes in", "time per image", "load + compile", "peak memory",
              "off ours: " + ", ".join(CHECKED.values())]
    out = [f"## Baseline and peers ({size}x{size}, 1 step, guidance 0, prompt in, PNG out)", ""]
    if b:
        out += [f"Baseline: {b['what']}; on {b['device']}, {b['seconds']['n']} timed.", ""]
    if peers:
        libraries = ", ".join(f"{name} {version}" for name, version in peers.get("libraries", {}).items() if version)
        exported = ", ".join(f"{weights} {fmt_s(seconds)}" for weights, seconds in peers.get("export_seconds", {}).items())
        out += [
            f"Peers: what a careful CPU user would run instead, on our weights (exported by optimum-intel's exporter: "
            f"{exported or '–'}), with static shapes, each in a process of its own, under {peers['python']} ({libraries or '–'}). "
            f"A peer's time is shown only when its outputs are within {peers['check_limit']:.0%} (relative) of ours.",
            "",
        ]
    return out + table(header, rows)


def _cpu_goals(results: dict[str, Any]) -> list[str]:
    goals = results["summary"].get("cpu_goals")
    if not goals:
        return []
    value = {"ratio": lambda v: f"{v:.2f}", "seconds": fmt_s, "bytes": fmt_bytes}
    rows = [[g["goal"], value[g["unit"]](g["value"]), f"≤ {value[g['unit']](g['limit'])}", "met" if g["met"] else "NOT met"]
            for g in goals]
    return ["## The CPU path's goals", ""] + table(["goal", "measured", "limit", ""], rows)


def _int8(results: dict[str, Any]) -> list[str]:
    int8 = results.get("int8")
    if not int8:
        return []
    build, misses = int8["build"], int8.get("misses", {})
    quality = build.get("quality", {})
    psnr = "identical" if quality.get("psnr_db") is None else f"{quality['psnr_db']:.1f} dB"
    rows = [
        ["how it was made", f"{build.get('mode', 'full')} quantization, {build.get('samples', '–')} calibration inputs, "
                            f"calibrated in {build.get('calibrated_in', '–')}, VAE decoder {build.get('vae_decoder', '–')}"],
        ["the build's int8 step: time, process peak resident", f"{fmt_s(build.get('seconds'))}, {fmt_bytes(build.get('peak_rss_bytes'))}"],
        [f"image error against the float build ({quality.get('images', '–')} images)",
         f"PSNR {psnr}, mean |error| {quality.get('mean_abs', 0):.2f} levels, max {quality.get('max_abs', 0):.0f}"],
        ["served: start to /readyz, peak resident", f"{fmt_s(int8.get('seconds_to_ready'))}, {fmt_bytes(int8.get('peak_rss_bytes'))}"],
        [f"cache misses at concurrency 1 ({misses.get('ok', 0)}/{misses.get('requests', 0)} ok): p50, p95",
         f"{fmt_s(misses.get('latency_s', {}).get('p50'))}, {fmt_s(misses.get('latency_s', {}).get('p95'))}"],
        ["inside the service, mean per miss", ", ".join(f"{k} {fmt_s(v)}" for k, v in int8.get("stages_s", {}).items()) or "–"],
    ]
    caveat = ("Random weights (sdxl-random) say little about the error on the real model: its activations have "
              "other ranges. The error is measured on the build's own fixed prompts and seeds.")
    return [f"## The int8 build over HTTP (`{int8.get('engine', '–')}`)", "", caveat, ""] + table(["figure", "value"], rows)


def _http(results: dict[str, Any]) -> list[str]:
    http = results.get("http")
    if not http:
        return []
    rows = []
    kinds = (
        ("misses", http["misses"]),
        ("image-to-image misses (strength 0.5, 2 steps)", http.get("image_to_image", [])),
        (f"{http['mixed_hit_share']:.0%} repeats", http["mixed"]),
    )
    for kind, levels in kinds:
        for level in levels:
            latency = level.get("latency_s", {})
            rows.append([
                kind, str(level["concurrency"]), f"{level['ok']}/{level['requests']}",
                *(fmt_s(latency.get(p)) for p in ("p50", "p95", "p99")),
                f"{level['per_second']:.3g}" if level.get("per_second") else "–",
                ", ".join(f"{status} {count}" for status, count in sorted(level["x_cache"].items())),
            ])
    size = http["size"]
    header = ["traffic", "concurrency", "ok", "p50", "p95", "p99", "images/s", "X-Cache"]
    return [f"## End to end over HTTP ({size}x{size}, 1 step)", ""] + table(header, rows)


def _cache_hits(results: dict[str, Any]) -> list[str]:
    hits = results.get("cache_hits")
    if not hits:
        return []
    disk_p50 = {level["concurrency"]: _p50(level["service"]) for t in hits["tiers"] if t["name"] == "disk"
                for level in t.get("levels", []) if "p50_ratio" in level}
    rows = []
    for row in hits["tiers"]:
        if "error" in row:
            rows.append([row["name"], "–", f"not measured: {row['error'].splitlines()[0]}"] + ["–"] * 9)
            continue
        for level in row["levels"]:
            service, bare = level["service"], level["bare_aiohttp"]
            answered = ", ".join(f"{tier} {count}" for tier, count in sorted(service["x_cache_tier"].items())) or "–"
            if "wrong_answers" in level:
                rows.append([row["name"], str(level["concurrency"]), str(service["requests"]), answered,
                             f"no figure: not all were {row['tier']}-tier hits"] + ["–"] * 7)
                continue
            over_disk = None
            if row["tier"] == "redis" and level["concurrency"] in disk_p50:
                over_disk = _p50(service) - disk_p50[level["concurrency"]]
            rows.append([
                row["name"], str(level["concurrency"]), str(service["requests"]), answered,
                fmt_s(_p50(service)), fmt_s(service["latency_s"]["p95"]), _rate(service),
                fmt_s(_p50(bare)), _rate(bare),
                f"{level['per_second_ratio']:.2f}", f"{level['p50_ratio']:.2f}x",
                fmt_s(over_disk) if over_disk is not None else "–",
            ])
    header = ["hits from", "concurrency", "requests", "X-Cache-Tier", "p50", "p95", "req/s", "bare p50", "bare req/s",
              "req/s / bare", "p50 / bare", "p50 - disk p50"]
    sizes = ", ".join(sorted({fmt_bytes(t["image_bytes"]) for t in hits["tiers"] if "image_bytes" in t}))
    title = f"## Cache hits: each tier against a bare aiohttp handler answering the same bytes ({sizes})"
    intro = ("Each row is a service process whose hits can come from one tier only. memory: the service as started for "
             "the HTTP section; disk: `--memory-cache-size 0`; redis: the memory tier off and the disk tier bypassed "
             "(a `--cache-dir` that cannot be created), the Redis read alone; redis, refilling disk: the memory tier off and "
             "a disk tier that keeps nothing (`--cache-size 1`), so each hit also writes the image to disk before answering, "
             "as a replica's first hit of an image does (plus diskcache culling it at once). Every answer's X-Cache-Tier is "
             "counted; a level whose hits came from another tier gets no figure.")
    goal_rows = [
        [g["figure"], f"{g['kind']} {_goal_value(g, g['bound'])}", _goal_value(g, g["worst"]),
         {True: "met", False: "**not met**", None: "not measured"}[g["met"]]]
        for g in hits["goals"]
    ]
    goals = ["Issue 24's goals, each at every concurrency level (the worst level shown):", ""]
    goals += table(["figure", "goal", "worst level", ""], goal_rows)
    return [title, "", intro, ""] + table(header, rows) + goals


def _replicas(results: dict[str, Any]) -> list[str]:
    replicas = results.get("replicas")
    if not replicas:
        return []
    rows = [
        [f"replica {i + 1}", str(r["requests"]), ", ".join(f"{k} {v}" for k, v in sorted(r["x_cache"].items())),
         f"{r['calls']:.0f}", f"{r['images']:.0f}"]
        for i, r in enumerate(replicas["per_replica"])
    ]
    rows.append(["both", str(replicas["requests"]), ", ".join(f"{k} {v}" for k, v in sorted(replicas["x_cache"].items())),
                 f"{replicas['engine_calls']:.0f}", f"{replicas['images_made']:.0f}"])
    verdict = "met" if replicas["met"] else "**not met**"
    return [
        f"## Two replicas sharing Redis (`{replicas['model']}`)",
        "",
        f"{replicas['unique_requests']} new requests, {replicas['requests'] // replicas['unique_requests']} identical "
        f"copies of each sent at once, alternately to each of {replicas['replicas']} service processes sharing one "
        f"redis-server; {replicas['ok']}/{replicas['requests']} answered 200. Engine calls and images made are the "
        "replicas' own counters (/metrics).",
        "",
        *table(["", "requests", "X-Cache", "engine calls", "images made"], rows),
        f"Images made per unique request: **{replicas['images_per_unique_request']:.2f}** (engine calls "
        f"{replicas['engine_calls_per_unique_request']:.2f}); goal exactly 1, all answered: {verdict}.",
        "",
    ]


def _faults(results: dict[str, Any]) -> list[str]:
    faults = results.get("faults")
    if not faults:
        return []
    rows = [[kind, str(count)] for kind, count in sorted(faults["outcomes"].items())]
    verdict = "met" if faults["failures"] == 0 else "**not met**"
    return [
        "## Faults under load (two tiny-model replicas sharing Redis)",
        "",
        f"{faults['duration_s']:.0f} s of steady hits and misses while these ran: {', '.join(faults['faults'])} "
        f"(disk: {faults['disk']}). Every answer counted; rerouted: could not connect to the stopped replica, sent to the other.",
        "",
        *table(["outcome", "answers"], rows),
        f"Failures (a 500, a 503 without Retry-After, a reset, a wrong image): **{faults['failures']}**; goal none: {verdict}.",
        "",
    ]


def _p50(level: dict[str, Any]) -> float | None:
    return level.get("latency_s", {}).get("p50")


def _goal_value(goal: dict[str, Any], value: float | None) -> str:
    if value is None:
        return "–"
    return fmt_s(value) if goal["unit"] == "s" else f"{value:.2f}"


def _scale(results: dict[str, Any]) -> list[str]:
    scale = results.get("scale")
    if not scale:
        return []
    base = results["summary"].get("ours_in_process_s")
    rows = [
        [str(r["steps"]), f"{r['size']}x{r['size']}", fmt_stats(r["seconds"]),
         f"{r['seconds']['median'] / base:.2f}x" if base else "–"]
        for r in scale["rows"]
    ]
    rows += [[str(r["steps"]), f"{r['size']}x{r['size']}", f"skipped: {r['skipped']}", "–"] for r in scale["skipped"]]
    size = results["plan"]["size"]
    header = ["steps", "size", "time per image", f"vs 1 step at {size}"]
    out = [f"## Scale (in process, {in_process_engine(results)})", ""] + table(header, rows)
    return out + [f"- {note}" for note in scale["notes"]] + [""]


def _rate(level: dict[str, Any]) -> str:
    return f"{level['per_second']:.0f}" if level.get("per_second") else "–"


def _load(load: Any) -> str:
    return " ".join(f"{x:.2f}" for x in load) if load else "–"


# --- files -----------------------------------------------------------------------------------------


def write_reports(results: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """`<stem>.json`, `<stem>.md` and `<stem>.png` in `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    paths["md"].write_text(markdown(results) + "\n")
    chart(results, paths["png"])
    return paths
