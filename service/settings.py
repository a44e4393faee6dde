"""One frozen Settings object, read from flags and environment variables and validated at start-up.

Each setting has a flag (`--cache-size`) and a variable (`SDXL_CACHE_SIZE`); a flag wins over the
variable, the variable over the default. A bad value stops start-up with a message naming where it
came from and the rule it broke.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from engines.base import DEFAULT_MODEL, DEVICES, ENGINES, PRECISIONS, VAES

if TYPE_CHECKING:
    from engines.select import EngineRequest

ENV_PREFIX = "SDXL_"
LOG_FORMATS = ("auto", "text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ACCESS_LOG_MODES = ("all", "errors", "off")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


class SettingsError(ValueError):
    """A setting broke its rule; the message names the flag or variable."""


def cache_root() -> Path:
    """Where the service keeps what it makes ($XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _default_cache_dir() -> Path:
    return cache_root() / "sdxl-turbo-service" / "images"


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    revision: str | None = None
    engine: str = "auto"
    engine_dir: Path = Path("build/engines")
    device: str = "auto"
    precision: str = "auto"
    vae: str = "full"
    static_sizes: tuple[tuple[int, int], ...] | None = None  # None: the base size; (): none
    cuda_graphs: bool = False
    host: str = "127.0.0.1"
    port: int = 5000
    cache_dir: Path = dataclasses.field(default_factory=_default_cache_dir)
    cache_size: int = 2 * 1024**3
    memory_cache_size: int = 256 * 1024**2
    cache_url: str | None = None
    cache_ttl: float = 7 * 86_400.0
    presets_dir: Path | None = None
    max_body_bytes: int = 64 * 1024
    max_image_body_bytes: int = 16 * 1024**2  # the routes that carry an input image
    max_input_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000
    max_steps: int = 4
    max_images: int = 4
    cors_origins: str = ""
    max_queue: int = 32
    max_batch: int = 1
    batch_window_ms: float = 0.0
    request_timeout: float = 120.0
    header_timeout: float = 15.0
    body_timeout: float = 30.0
    shutdown_timeout: float = 30.0
    log_level: str = "INFO"
    log_format: str = "auto"
    access_log: str = "all"
    api_keys_file: Path | None = None
    metrics_require_key: bool = False
    max_queue_share: float = 0.5

    def engine_request(self) -> EngineRequest:
        """The settings the engine is built from: read here once, for the service and for the
        benchmark's in-process engine (benchmarks/scale.py), so both build the same one."""
        from engines.select import EngineRequest  # torch behind it: imported once the flags are accepted

        return EngineRequest(
            engine=self.engine,
            model=self.model,
            engine_dir=self.engine_dir,
            device=self.device,
            precision=self.precision,
            presets_dir=self.presets_dir,
            vae=self.vae,
            revision=self.revision,
            static_sizes=self.static_sizes,
            cuda_graphs=self.cuda_graphs,
        )


def parse_size(text: str) -> int:
    """'2GB', '512MB', '1048576' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("must be a size such as 2GB, 500MB or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


def _bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"must be {'an integer' if kind is int else 'a number'} from {low:g} to {high:g}") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low:g} to {high:g}")
        return value

    return parse


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("must be true or false")
    return text.lower() in ("true", "1", "yes")


def _origins(text: str) -> str:
    origins = [o.strip() for o in text.split(",") if o.strip()]
    bad = [o for o in origins if o != "*" and not re.fullmatch(r"https?://[^/\s]+", o)]
    if bad:
        raise ValueError(f"each origin must be * or scheme://host[:port] with no path, got {', '.join(bad)}")
    return ",".join(origins)


def _static_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'512x512,768x512' -> ((512, 512), (768, 512)); 'none' -> ()."""
    if text.strip().lower() == "none":
        return ()
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", part)
        if not match:
            raise ValueError("must be WIDTHxHEIGHT sizes separated by commas, such as 512x512,768x512, or none")
        sizes.append((int(match.group(1)), int(match.group(2))))
    return tuple(dict.fromkeys(sizes))


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


# field -> (parser, help). The flag is --field-name, the variable SDXL_FIELD_NAME.
OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "model": (_nonempty, "tiny | sdxl-random | a Hugging Face hub id | a local pipeline directory"),
    "revision": (_nonempty, "a hub model's commit, tag or branch (default: main); pin a commit in production"),
    "engine": (_choice(ENGINES), f"inference backend, {' | '.join(ENGINES)}; auto picks the fastest that can run here"),
    "engine_dir": (Path, "where build_engines.py wrote engines and manifest.json"),
    "device": (_choice(DEVICES), f"where PyTorch runs, {' | '.join(DEVICES)}; cpu also keeps auto and onnxruntime off the GPU"),
    "precision": (_choice(PRECISIONS), f"numerics, {' | '.join(PRECISIONS)}; auto: fp16 on CUDA, bf16 on CPUs that have it, else fp32; int8: an OpenVINO int8 build"),
    "vae": (_choice(VAES), "full: the SDXL VAE; tiny: the tiny autoencoder (TAESD-XL), fast previews"),
    "static_sizes": (_static_sizes, "OpenVINO: sizes also compiled with static shapes, e.g. 512x512,768x512 (faster; each costs one more "
                     "copy of the UNet and VAE decoder in memory); other sizes run the dynamic compile, compiled at first use; "
                     "none: the dynamic compile only"),
    "cuda_graphs": (_flag, "TensorRT: true replays each UNet and VAE call as a CUDA graph over persistent I/O buffers "
                    "(fewer kernel launches; not yet measured on a GPU)"),
    "host": (_nonempty, "address to listen on"),
    "port": (_bounded(int, 1, 65535), "port to listen on"),
    "cache_dir": (Path, "image cache directory (private to the service user)"),
    "cache_size": (lambda t: _positive_size(t), "image cache size limit, e.g. 2GB"),
    "memory_cache_size": (lambda t: parse_size(t), "in-process tier of the hottest images, e.g. 256MB (0: off)"),
    "cache_url": (lambda t: _redis_url(t), "shared cache tier for replicas, redis://host:port/db (rediss:// for TLS; default: none)"),
    "cache_ttl": (_bounded(float, 1, 365 * 86_400), "seconds an image lives in the shared tier"),
    "presets_dir": (Path, "where the tiny preset is saved once built"),
    "max_body_bytes": (_bounded(int, 1024, 16 * 1024**2), "largest request body accepted"),
    "max_image_body_bytes": (_bounded(int, 1024, 256 * 1024**2), "largest body of the routes that carry an input image"),
    "max_input_pixels": (_bounded(int, 64, 2**28), "most pixels of an input image, checked before it is decoded"),
    "max_prompt_chars": (_bounded(int, 1, 100_000), "longest prompt accepted, in characters"),
    "max_steps": (_bounded(int, 1, 50), "most inference steps a request may ask for"),
    "max_images": (_bounded(int, 1, 16), "most images one /v1 request may ask for (OpenAI's n)"),
    "cors_origins": (_origins, "origins that may call the API from a browser, comma-separated (* for any); empty: CORS off"),
    "max_queue": (_bounded(int, 1, 100_000), "work waiting for the model before new requests get 429, in 512x512 1-step images (a request counts pixels x steps x 2 with guidance)"),
    "max_batch": (_bounded(int, 1, 64), "most requests run as one UNet batch (1: batching off)"),
    "batch_window_ms": (_bounded(float, 0, 10_000), "how long a batch waits to fill up"),
    "request_timeout": (_bounded(float, 0.1, 86_400), "seconds a request may take before 504"),
    "header_timeout": (_bounded(float, 0.5, 3_600), "seconds a connection may stay idle or take to send its headers before it is closed"),
    "body_timeout": (_bounded(float, 0.5, 3_600), "seconds a request may take to send its body before 408"),
    "shutdown_timeout": (_bounded(float, 0, 3_600), "seconds in-flight requests get to finish on SIGTERM"),
    "log_level": (_choice(LOG_LEVELS), f"logging level, {' | '.join(LOG_LEVELS)}; DEBUG also logs the probes and scrapes"),
    "log_format": (_choice(LOG_FORMATS), "auto: text on a terminal, else json; json: one object a line with the request id; text: for people"),
    "access_log": (_choice(ACCESS_LOG_MODES), "all: a line per request; errors: only those answered 400 or above; off: none (logs shipped elsewhere, e.g. by a proxy)"),
    "api_keys_file": (Path, "file of API keys, one per line: with it, every route but the probes, the page and /openapi.json needs a key"),
    "metrics_require_key": (_flag, "true: /metrics needs an API key too (by default it is open for the scraper)"),
    "max_queue_share": (_bounded(float, 0.01, 1), "with API keys: the largest share of the queue one key may hold"),
}


def _positive_size(text: str) -> int:
    value = parse_size(text)
    if value <= 0:
        raise ValueError("must be larger than 0")
    return value


def _redis_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("must be redis://host:port/db (or rediss:// for TLS)")
    try:
        parts.port  # noqa: B018 (parsing it checks it)
    except ValueError:
        raise ValueError("the port must be a number from 0 to 65535") from None
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("the database must be a number, as in redis://host:6379/0")
    return text.strip()


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve SDXL Turbo images over HTTP.")
    defaults = Settings()
    for field, (_, help_text) in OPTIONS.items():
        default = getattr(defaults, field)
        shown = "" if default is None else f"; default {default}"
        parser.add_argument(flag_name(field), dest=field, default=None, help=f"{help_text} [{env_name(field)}{shown}]")
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags, then environment variables, then defaults; raises SettingsError naming the source."""
    environ = os.environ if environ is None else environ
    flags = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for field, (parse, _) in OPTIONS.items():
        if flags[field] is not None:
            raw, source = flags[field], flag_name(field)
        elif environ.get(env_name(field)):
            raw, source = environ[env_name(field)], env_name(field)
        else:
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{source}={raw!r}: {exc}") from None
    return Settings(**values)
