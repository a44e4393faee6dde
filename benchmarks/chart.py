"""The PNG chart of a run: ours against the baseline, fraction of peak, HTTP latency, cache-hit tiers, scale."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

from benchmarks.cache_hits import DISK_PER_SECOND, MEMORY_PER_SECOND
from benchmarks.summary import component_rates, in_process_engine, peer_rows


def chart(results: dict[str, Any], path: Path) -> None:
    """Six panels on one PNG at `path`; a panel whose section did not run says so."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache and unit chatter
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    warnings = results.get("summary", {}).get("warnings", [])
    title = f"{results['model']} on {results['machine_label']} ({results['started'][:10]})"
    fig.suptitle("\n".join([title, *warnings]), color="black" if not warnings else "darkred", fontsize=10)
    panels = (_time_per_image, _fraction_of_peak, _http_latency, _cache_hits, _component_times, _scale)
    for ax, panel in zip(axes.flat, panels):
        panel(ax, results)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _time_per_image(ax: Any, results: dict[str, Any]) -> None:
    """Ours beside the baseline and every measured peer, under the names the tables give them."""
    summary = results["summary"]
    engine = summary.get("service_engine", "the service")
    items = [(f"ours over HTTP ({engine})", summary["ours_http_s"])] if "ours_http_s" in summary else []
    if "ours_in_process_s" in summary:
        items.append((f"ours in process ({in_process_engine(results)})", summary["ours_in_process_s"]))
    if "baseline_s" in summary:
        items.append((results["baseline"]["name"], summary["baseline_s"]))
    items += [(row["name"], row["seconds"]["median"]) for row in peer_rows(results) if "seconds" in row]
    _bars(ax, [(textwrap.fill(label, 28), seconds) for label, seconds in items],
          "seconds per image (lower is better)", "Time per image (1 step)", horizontal=True)


def _fraction_of_peak(ax: Any, results: dict[str, Any]) -> None:
    rows = [r for r in component_rates(results) if "fraction_of_peak" in r]
    _bars(ax, [(_component_label(r), 100 * r["fraction_of_peak"]) for r in rows],
          "% of the measured matmul peak (higher is better)", "Components: fraction of peak", horizontal=True)
    # Read against the whole scale: 100 % is the peak, and a bar past it marks the peak as wrong.
    top = max([100.0] + [110 * r["fraction_of_peak"] for r in rows])
    ax.set_xlim(0, top)
    ax.axvline(100, color="darkred", linestyle="--", linewidth=1)


def _component_times(ax: Any, results: dict[str, Any]) -> None:
    rows = results.get("components", [])
    _bars(ax, [(_component_label(r), r["seconds"]["median"]) for r in rows], "seconds (lower is better)", "Components: time", horizontal=True)


def _http_latency(ax: Any, results: dict[str, Any]) -> None:
    http = results.get("http", {})
    names = {"misses": "misses", "mixed": f"{http.get('mixed_hit_share', 0):.0%} repeats"}  # the table's "traffic" column
    for kind, name in names.items():
        points = [(level["concurrency"], level["latency_s"]["p50"]) for level in http.get(kind, []) if "latency_s" in level]
        if points:
            concurrency, latency = zip(*points)
            ax.plot(concurrency, latency, marker="o", label=f"{name} p50")
    ax.set_yscale("log")  # misses take seconds, hits milliseconds
    _finish(ax, "concurrency", "seconds, log scale (lower is better)", "End to end over HTTP: p50 latency")


def _cache_hits(ax: Any, results: dict[str, Any]) -> None:
    for tier in results.get("cache_hits", {}).get("tiers", []):
        points = [(level["concurrency"], level["per_second_ratio"]) for level in tier.get("levels", []) if "per_second_ratio" in level]
        if points:
            concurrency, ratio = zip(*points)
            ax.plot(concurrency, ratio, marker="o", label=tier["name"])
    for goal, tier in ((MEMORY_PER_SECOND, "memory"), (DISK_PER_SECOND, "disk")):
        ax.axhline(goal, color="gray", linestyle="--", linewidth=1)
        ax.text(1, goal, f" {tier} goal", va="bottom", fontsize=7, color="gray")
    ax.set_ylim(bottom=0)
    _finish(ax, "concurrency", "hits/s over the bare handler's (higher is better)", "Cache hits: each tier / bare aiohttp")


def _scale(ax: Any, results: dict[str, Any]) -> None:
    rows = results.get("scale", {}).get("rows", [])
    _bars(ax, [(f"{r['steps']} st\n{r['size']}", r["seconds"]["median"]) for r in rows],
          "seconds per image (lower is better)", "Scale: steps and size")


def _component_label(row: dict[str, Any]) -> str:
    """The table's three columns, in its words."""
    return f"{row['component']} | {row['backend']} | {row['precision']}"


def _bars(ax: Any, items: list[tuple[str, float]], unit: str, title: str, horizontal: bool = False) -> None:
    labels = [label for label, _ in items]
    values = [value for _, value in items]
    if horizontal:
        ax.barh(labels, values)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel(unit)
    else:
        ax.bar(labels, values)
        ax.set_ylabel(unit)
    ax.set_title(title)
    if not items:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)


def _finish(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
