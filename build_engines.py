"""`python build_engines.py --model M --out DIR`: export the UNet and the VAE decoder to ONNX, build
TensorRT plans for this GPU, and write DIR/manifest.json. A thin command line over `engines.build`.

Examples:
    python build_engines.py --model tiny --out build/engines --onnx-only
    python build_engines.py --model stabilityai/sdxl-turbo --out build/engines --batch 1-4 --sizes 512x512,768x768
    python build_engines.py --model stabilityai/sdxl-turbo --out build/engines-cpu --target cpu --precision int8
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

from engines.base import BUILD_PRECISIONS, DEFAULT_MODEL, TARGETS
from engines.build.builder import BuildError, BuildRequest, build
from engines.build.openvino_int8 import DEFAULT_SAMPLES, INT8_MODES, MIN_PSNR_DB, Int8Options
from engines.core.specs import BuildRange, Size

logger = logging.getLogger("build_engines")


def parse_batch(text: str) -> tuple[int, int]:
    """'4' -> (4, 4); '1-4' -> (1, 4)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a batch size such as 1 or a range such as 1-4")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes go from 1 to 64, low to high")
    return low, high


def parse_sizes(text: str) -> tuple[Size, ...]:
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", part)
        if not match:
            raise argparse.ArgumentTypeError(f"{part!r}: expected WIDTHxHEIGHT, e.g. 512x512")
        sizes.append((int(match.group(1)), int(match.group(2))))
    return tuple(dict.fromkeys(sizes))


def parse_decibels(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of dB, e.g. 20")
    return value


def parse_samples(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of UNet inputs from 1 to 1000, e.g. {DEFAULT_SAMPLES}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python build_engines.py",
        description="Export SDXL Turbo's UNet and VAE decoder: ONNX and TensorRT plans for this GPU, or OpenVINO IR for the CPU.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="tiny | sdxl-random | a hub id | a local pipeline directory")
    parser.add_argument(
        "--revision", help="a hub model's commit, tag or branch (default: main); the manifest records the commit it resolves to"
    )
    parser.add_argument("--out", type=Path, default=Path("build/engines"), help="where the files and manifest.json go")
    parser.add_argument(
        "--precision", choices=BUILD_PRECISIONS, default="fp16",
        help="the UNet's TensorRT precision (the VAE is never fp16); int8 with --target cpu: the float IR plus an "
             "NNCF-quantized int8 UNet (and VAE decoder where the error allows), with the image error recorded",
    )
    parser.add_argument(
        "--int8-min-psnr", type=parse_decibels, default=None, metavar="DB",
        help=f"--precision int8: the least PSNR of the int8 images against the float ones (default {MIN_PSNR_DB:g} dB)",
    )
    parser.add_argument(
        "--calibration-samples", type=parse_samples, default=None, metavar="N",
        help=f"--precision int8: how many UNet inputs NNCF calibrates on (default {DEFAULT_SAMPLES}; "
             "time and memory grow with it)",
    )
    parser.add_argument(
        "--int8-mode", choices=INT8_MODES, default=None,
        help="--precision int8: hybrid (int8 MatMul weights computed in float, int8 convolutions; the default) or "
             "full (int8 MatMuls and convolutions; needs more than 24 GB for the full SDXL UNet)",
    )
    parser.add_argument("--batch", type=parse_batch, default=(1, 1), help="requests per batch: N or MIN-MAX (default 1)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--sizes", type=parse_sizes, help="exact image sizes, e.g. 512x512,768x768 (default 512x512)")
    sizes.add_argument("--min-size", type=int, help="smallest image side of a size range (with --max-size)")
    parser.add_argument("--max-size", type=int, help="largest image side of a size range")
    parser.add_argument("--onnx-only", action="store_true", help="export ONNX only (no GPU needed): the ONNX Runtime backend")
    parser.add_argument(
        "--target", choices=TARGETS, default="gpu",
        help="gpu: ONNX and TensorRT plans for this GPU; cpu: OpenVINO IR for the CPU path (no GPU needed)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild everything, even what is up to date")
    parser.add_argument("--opt-level", type=int, choices=range(6), default=3, metavar="0-5", help="TensorRT builder optimisation level")
    parser.add_argument("--presets-dir", type=Path, help="where the tiny preset is saved once built")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO")
    return parser


def build_range(args: argparse.Namespace) -> BuildRange:
    low, high = args.batch
    if args.min_size is None and args.max_size is None:
        return BuildRange.for_sizes(args.sizes or ((512, 512),), low, high)
    if args.sizes is not None:
        raise ValueError("--sizes and --max-size: give exact sizes or a size range, not both")
    smallest = 512 if args.min_size is None else args.min_size
    largest = max(smallest, 512) if args.max_size is None else args.max_size
    return BuildRange.for_size_range(smallest, largest, low, high)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("int8_min_psnr", "calibration_samples", "int8_mode"):
        if getattr(args, flag) is not None and args.precision != "int8":
            parser.error(f"--{flag.replace('_', '-')}: applies to --precision int8 only")
    int8 = Int8Options(**{name: value for name, value in (("samples", args.calibration_samples), ("mode", args.int8_mode))
                          if value is not None})
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        request = BuildRequest(
            model=args.model,
            out=args.out,
            build_range=build_range(args),
            precision=args.precision,
            onnx_only=args.onnx_only,
            target=args.target,
            force=args.force,
            optimization_level=args.opt_level,
            presets_dir=args.presets_dir,
            revision=args.revision,
            int8_min_psnr=MIN_PSNR_DB if args.int8_min_psnr is None else args.int8_min_psnr,
            int8=int8,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = build(request)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report.made or report.manifest_written:
        logger.info("made %s; manifest: %s", ", ".join(report.made) or "nothing new", args.out / "manifest.json")
    else:
        logger.info("nothing to do: everything in %s is up to date", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
