"""`python -m benchmarks.openvino_memory --engine-dir DIR`: what a compiled OpenVINO UNet holds resident,
and which way of loading it holds the least.

Each way runs in a fresh process: compile the IR of a --target cpu build, run one inference, drop
every reference but the compiled model, and read /proc/self/status. RssFile is mapped files
(the IR's model.bin, mapped by OpenVINO's reader, or a cached blob); RssAnon the process's own
memory (the weights repacked for this CPU's kernels). The float IR stores fp16 weights that the
CPU plugin expands into f32 or bf16 copies when it compiles, so a mapping kept alive beside them
holds the weights twice.

Ways: `mmap` (the default: read_model maps model.bin), `no-mmap` (ENABLE_MMAP off: read into
memory), `cache-cold` and `cache-warm` (CACHE_DIR: the first start writes the compiled blob, the
second imports it instead of reading the IR; `cache-warm-no-mmap` reads that blob into memory
instead of mapping it). `-released` (what the service does): the inference runs under
engines.core.resident.releasing_mapped_pages, which drops the mapped pages as the plugin repacks.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.isolation import run_isolated
from engines.core.specs import UNET

WAYS = ("mmap", "mmap-released", "no-mmap", "cache-cold", "cache-warm", "cache-warm-released", "cache-warm-no-mmap")
FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def resident() -> dict[str, int]:
    lines = Path("/proc/self/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.split(":")[0] in FIELDS}


def load_once(engine_dir: Path, way: str, precision: str, cache_dir: str | None) -> dict[str, Any]:
    """In a fresh process: compile the UNet IR `way`, infer once, and report memory and seconds."""
    import openvino as ov

    from engines.backends.openvino_engine import OpenVINORunner
    from engines.core.hardware import usable_cpu_count
    from engines.core.resident import mapped_resident, releasing_mapped_pages
    from engines.manifest import Manifest

    manifest = Manifest.read(engine_dir)
    spec = manifest.dims.specs()[UNET]
    path = engine_dir / manifest.artefact(engine_dir, UNET, "openvino").path
    core = ov.Core()
    if way.endswith("no-mmap"):
        core.set_property({"ENABLE_MMAP": False})
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_NUM_THREADS": usable_cpu_count()}
    if cache_dir:
        config["CACHE_DIR"] = cache_dir
    started = time.perf_counter()
    runner = OpenVINORunner(core.compile_model(str(path), "CPU", config), spec)
    compile_s = time.perf_counter() - started
    samples = spec.sample_inputs(batch=1, width=512, height=512)
    weights = Path(cache_dir) if cache_dir else engine_dir  # what the compiled model maps
    with releasing_mapped_pages(weights) if way.endswith("released") else contextlib.nullcontext():
        runner(*(samples[name] for name in spec.input_names))
    gc.collect()
    mapped = sum(sum(mapped_resident(Path(d)).values()) for d in {engine_dir, *([cache_dir] if cache_dir else [])})
    return {"way": way, "compile_s": compile_s, **resident(), "ir_mapped": mapped}


def measure(engine_dir: Path, precision: str) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ov-cache-") as cache_dir:
        for way in WAYS:
            rows.append(run_isolated(load_once, engine_dir, way, precision, cache_dir if way.startswith("cache") else None))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openvino_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--engine-dir", type=Path, required=True, help="a build_engines.py --target cpu output")
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16"), help="INFERENCE_PRECISION_HINT")
    args = parser.parse_args(argv)
    rows = measure(args.engine_dir, args.precision)
    mib = 2**20
    columns = (*FIELDS, "ir_mapped")
    print("| way | compile s | " + " | ".join(f"{c} MiB" for c in columns) + " |\n|" + "---|" * (len(columns) + 2))
    for r in rows:
        print(f"| {r['way']} | {r['compile_s']:.2f} | " + " | ".join(f"{r[c] / mib:.1f}" for c in columns) + " |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
