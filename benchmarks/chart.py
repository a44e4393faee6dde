"""The PNG chart of a run: ours against the baseline, fraction of peak, HTTP latency, cache hits, scale."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from benchmarks.summary import component_rates


def chart(results: dict[str, Any], path: Path) -> None:
    """Six panels on one PNG at `path`; a panel whose section did not run says so."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache and unit chatter
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(f"{results['model']} on {results['machine_label']} ({results['started'][:10]})")
    panels = (_time_per_image, _fraction_of_peak, _http_latency, _cache_hits, _component_times, _scale)
    for ax, panel in zip(axes.flat, panels):
        panel(ax, results)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _time_per_image(ax: Any, results: dict[str, Any]) -> None:
    summary = results["summary"]
    labels = {"baseline_s": "baseline\n(diffusers)", "ours_in_process_s": "ours\nin process", "ours_http_s": "ours\nover HTTP"}
    _bars(ax, [(label, summary[key]) for key, label in labels.items() if key in summary],
          "seconds per image", "Time per image (1 step)")


def _fraction_of_peak(ax: Any, results: dict[str, Any]) -> None:
    rows = [r for r in component_rates(results) if "fraction_of_peak" in r]
    _bars(ax, [(_component_label(r), 100 * r["fraction_of_peak"]) for r in rows],
          "% of measured matmul peak", "Components: fraction of peak", horizontal=True)


def _component_times(ax: Any, results: dict[str, Any]) -> None:
    rows = results.get("components", [])
    _bars(ax, [(_component_label(r), r["seconds"]["median"]) for r in rows], "seconds", "Components: time", horizontal=True)


def _http_latency(ax: Any, results: dict[str, Any]) -> None:
    http = results.get("http", {})
    for kind in ("misses", "mixed"):
        points = [(level["concurrency"], level["latency_s"]["p50"]) for level in http.get(kind, []) if "latency_s" in level]
        if points:
            concurrency, latency = zip(*points)
            ax.plot(concurrency, latency, marker="o", label=f"{kind} p50")
    ax.set_yscale("log")  # misses take seconds, hits milliseconds
    _finish(ax, "concurrency", "seconds (log)", "HTTP latency (p50)")


def _cache_hits(ax: Any, results: dict[str, Any]) -> None:
    levels = [level for level in results.get("cache_hits", {}).get("levels", []) if "p50_ratio" in level]
    for who, offset in (("service", -0.2), ("bare_aiohttp", 0.2)):
        if levels:
            positions = [i + offset for i in range(len(levels))]
            ax.bar(positions, [1000 * level[who]["latency_s"]["p50"] for level in levels], width=0.4, label=who)
    ax.set_xticks(range(len(levels)), [str(level["concurrency"]) for level in levels])
    _finish(ax, "concurrency", "ms", "Cache hit p50: service vs bare aiohttp")


def _scale(ax: Any, results: dict[str, Any]) -> None:
    rows = results.get("scale", {}).get("rows", [])
    _bars(ax, [(f"{r['steps']} st\n{r['size']}", r["seconds"]["median"]) for r in rows],
          "seconds per image", "Scale: steps and size")


def _component_label(row: dict[str, Any]) -> str:
    return f"{row['component']}\n{row['backend']} {row['precision']}"


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
