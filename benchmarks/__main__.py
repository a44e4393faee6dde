"""`python -m benchmarks`: measure the service and its baseline side by side, and report.

    python -m benchmarks --quick                  # every section on the tiny model, a few minutes
    python -m benchmarks --model sdxl-random      # the full architecture (make bench), ~22 min on 2 CPU cores, plus the peers
    python -m benchmarks --model stabilityai/sdxl-turbo --engine tensorrt   # on a GPU, after make engines
    python -m benchmarks --model sdxl-random --engine-dir DIR --service-precision int8 --sections http   # an int8 build
    python -m benchmarks --model sdxl-random --sections peers    # the peers alone (make peers-install first)

Writes <out>/<machine>-<date>.json, .md and .png and prints the Markdown.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from datetime import date
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.peers import PEERS_PYTHON
from benchmarks.plan import plan_for
from benchmarks.report import markdown, write_reports
from benchmarks.suite import SECTIONS, Options, run_suite
from engines.base import DEVICES, ENGINES, PRECISIONS, VAES

RESULTS_DIR = Path(__file__).with_name("results")  # committed: the figures docs/performance.md quotes
SCRATCH_DIR = Path(__file__).with_name("scratch")  # ignored: quick runs


def sections(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(SECTIONS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmark the SDXL Turbo service against its baseline."
    )
    parser.add_argument(
        "--model", help="tiny | sdxl-random | a hub id | a local pipeline directory (default: sdxl-random; tiny with --quick)"
    )
    parser.add_argument(
        "--engine", default="auto", choices=ENGINES,
        help="the service's backend; with auto, components time every backend present",
    )
    parser.add_argument("--engine-dir", type=Path, default=Path("build/engines"), help="where build_engines.py wrote engines")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--vae", default="full", choices=VAES, help="the service's VAE (tiny: TAESD-XL)")
    parser.add_argument(
        "--service-precision", choices=PRECISIONS,
        help="the service's --precision over HTTP (default: the plan's); int8 needs an int8 build in --engine-dir",
    )
    parser.add_argument("--quick", action="store_true", help="every section, few repeats, the tiny model: a few minutes")
    parser.add_argument("--out", type=Path, help=f"output directory (default: {RESULTS_DIR}; {SCRATCH_DIR} with --quick)")
    parser.add_argument("--sections", type=sections, default=SECTIONS, help=f"a subset of {','.join(SECTIONS)}")
    parser.add_argument(
        "--peers-dir", type=Path, default=Path("build/peers"),
        help="where the peers' inputs are kept between runs: our checkpoint, reference outputs, their export",
    )
    parser.add_argument("--peers-python", type=Path, default=PEERS_PYTHON, help="the peers' interpreter (make peers-install)")
    parser.add_argument("--presets-dir", type=Path, help="where the tiny preset is saved (the service's default if omitted)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    plan = plan_for(args.quick, device)
    options = Options(
        model=args.model or ("tiny" if args.quick else "sdxl-random"),
        engine=args.engine,
        engine_dir=args.engine_dir,
        vae=args.vae,
        service_precision=args.service_precision,
        device=device,
        plan=plan,
        sections=args.sections,
        command=shlex.join(["python", "-m", "benchmarks", *argv]),
        presets_dir=args.presets_dir,
        peers_dir=args.peers_dir,
        peers_python=args.peers_python,
        log_level=args.log_level,
    )
    results = run_suite(options)
    out_dir = args.out or (SCRATCH_DIR if args.quick else RESULTS_DIR)
    stem = f"{results['machine_label']}-{date.today().isoformat()}" + ("-quick" if args.quick else "")
    paths = write_reports(results, out_dir, stem)
    print(markdown(results))
    print("\nwritten: " + ", ".join(str(p) for p in paths.values()))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
