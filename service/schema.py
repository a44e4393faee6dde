"""The request of POST /generate-image: parse, validate, normalise; its canonical form for the cache key.

Field names follow diffusers. Every rule raises an `InvalidField` that names the field and the rule,
so a bad request never reaches the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from engines.base import EngineLimits, GenerationRequest
from service.errors import InvalidField, MalformedBody

SEED_MAX = 2**32 - 1
RANDOM_SEED = -1
GUIDANCE_MAX = 20.0
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FIELDS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "width", "height", "format")


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_chars: int = 2000
    max_steps: int = 4
    engine: EngineLimits = EngineLimits()


@dataclass(frozen=True)
class ImageJob:
    """A normalised request: what the engine runs, and how the answer is encoded."""

    generation: GenerationRequest
    output_format: str = "png"

    @property
    def media_type(self) -> str:
        return FORMATS[self.output_format]

    def canonical(self) -> dict[str, Any]:
        """Every field that decides the bytes, explicit: equal requests give equal dicts."""
        g = self.generation
        return {
            "prompt": g.prompt,
            "negative_prompt": g.negative_prompt,
            "num_inference_steps": g.num_inference_steps,
            "guidance_scale": g.guidance_scale,
            "seed": g.seed,
            "width": g.width,
            "height": g.height,
            "format": self.output_format,
        }


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_json_body(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity literals."""

    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError as exc:
        raise MalformedBody("the body is not UTF-8 text") from exc
    except RecursionError:
        raise MalformedBody("the body is not valid JSON: it is nested too deeply") from None
    except ValueError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from exc


def _integer(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    # bool is an int in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"{name} must be an integer, got {_json_type(value)}", name)
    return value


def _text(body: dict[str, Any], name: str, default: str | None, max_chars: int) -> str:
    if name not in body and default is None:
        raise InvalidField(f"{name} is required", name)
    value = body.get(name, default)
    if not isinstance(value, str):
        raise InvalidField(f"{name} must be a string, got {_json_type(value)}", name)
    value = value.strip()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's \ud800 escapes decode to lone surrogates
        raise InvalidField(f"{name} must be Unicode text; it has a lone surrogate at character {exc.start}", name) from None
    if len(value) > max_chars:
        raise InvalidField(f"{name} must be at most {max_chars} characters, got {len(value)}", name)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def derived_seed(canonical_without_seed: dict[str, Any]) -> int:
    """The default seed: a hash of the request, so the same request gives the same image."""
    digest = hashlib.sha256(canonical_json(canonical_without_seed).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def preferred_format(accept: str | None) -> str:
    """PNG unless the Accept header asks for WebP or JPEG and not PNG."""
    if not accept:
        return "png"
    accepted = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if accepted & {"image/png", "image/*", "*/*"}:
        return "png"
    for fmt in ("webp", "jpeg"):
        if FORMATS[fmt] in accepted:
            return fmt
    return "png"


def parse_generation_request(body: Any, limits: RequestLimits, accept: str | None = None) -> ImageJob:
    """Validate and normalise a decoded JSON body; raises `InvalidField` or `MalformedBody`."""
    # 1. The shape: an object with known fields only (a typo must not pass silently).
    if not isinstance(body, dict):
        raise MalformedBody(f"the body must be a JSON object, got {_json_type(body)}")
    for name in body:
        if name not in FIELDS:
            raise InvalidField(f"unknown field {name!r}; the fields are: {', '.join(FIELDS)}", name)

    # 2. Text.
    prompt = _text(body, "prompt", None, limits.max_prompt_chars)
    if not prompt:
        raise InvalidField("prompt must not be empty", "prompt")
    negative_prompt = _text(body, "negative_prompt", "", limits.max_prompt_chars)

    # 3. Numbers.
    steps = _integer(body, "num_inference_steps", 1)
    if not 1 <= steps <= limits.max_steps:
        raise InvalidField(f"num_inference_steps must be from 1 to {limits.max_steps}, got {steps}", "num_inference_steps")
    guidance = body.get("guidance_scale", 0.0)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
        raise InvalidField(f"guidance_scale must be a number, got {_json_type(guidance)}", "guidance_scale")
    if not (math.isfinite(guidance) and 0.0 <= guidance <= GUIDANCE_MAX):
        raise InvalidField(f"guidance_scale must be from 0 to {GUIDANCE_MAX:g}, got {guidance}", "guidance_scale")
    seed = _integer(body, "seed", RANDOM_SEED - 1)  # sentinel: omitted
    omitted_seed = "seed" not in body
    if not omitted_seed and not (seed == RANDOM_SEED or 0 <= seed <= SEED_MAX):
        raise InvalidField(f"seed must be from 0 to {SEED_MAX}, or -1 for a random seed, got {seed}", "seed")

    # 4. Size: multiples of 8 inside what the engine supports.
    engine_limits = limits.engine
    size = {name: _integer(body, name, 512) for name in ("width", "height")}
    for name, value in size.items():
        if value % engine_limits.size_multiple:
            raise InvalidField(f"{name} must be a multiple of {engine_limits.size_multiple}, got {value}", name)
    width, height = size["width"], size["height"]
    if not engine_limits.supports(width, height):
        in_range = engine_limits.min_size <= width <= engine_limits.max_size
        raise InvalidField(
            f"{width}x{height} is not a size this engine supports; supported: {engine_limits.describe_sizes()}",
            "height" if in_range else "width",
        )

    # 5. Output format: the field, else the Accept header.
    output_format = body.get("format", preferred_format(accept))
    if not isinstance(output_format, str) or output_format not in FORMATS:
        raise InvalidField(f"format must be one of {', '.join(FORMATS)}, got {output_format!r}", "format")

    # 6. Normalise what does not change the picture, so that it does not change the cache key:
    #    guidance at or below 1 is off, and the negative prompt is read only under guidance.
    if guidance <= 1.0:
        guidance, negative_prompt = 0.0, ""
    fields = dict(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=float(guidance),
        width=width,
        height=height,
    )

    # 7. The concrete seed: derived when omitted, fresh when -1.
    if omitted_seed:
        seed = derived_seed(fields)  # not the format: one picture, whatever its encoding
    elif seed == RANDOM_SEED:
        seed = secrets.randbelow(SEED_MAX + 1)
    return ImageJob(GenerationRequest(seed=seed, **fields), output_format)


# --- POST /v1/images/generations: the OpenAI Images API shape over the same rules -----------------

OPENAI_FIELDS = ("prompt", "n", "size", "response_format", "model", "user", "negative_prompt",
                 "num_inference_steps", "guidance_scale", "seed")
MAX_IMAGES_PER_REQUEST = 4
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


def parse_openai_request(body: Any, limits: RequestLimits) -> list[ImageJob]:
    """OpenAI's `prompt`, `n`, `size`, `response_format` (b64_json only), plus our own fields.

    Each of the n images is an ordinary job: image i uses seed + i, so every one is cacheable.
    """
    if not isinstance(body, dict):
        raise MalformedBody(f"the body must be a JSON object, got {_json_type(body)}")
    for name in body:
        if name not in OPENAI_FIELDS:
            raise InvalidField(f"unknown field {name!r}; the fields are: {', '.join(OPENAI_FIELDS)}", name)
    count = _integer(body, "n", 1)
    if not 1 <= count <= MAX_IMAGES_PER_REQUEST:
        raise InvalidField(f"n must be from 1 to {MAX_IMAGES_PER_REQUEST}, got {count}", "n")
    if body.get("response_format", "b64_json") != "b64_json":
        raise InvalidField("response_format must be b64_json (this service stores no image URLs)", "response_format")
    for name in ("model", "user"):
        if name in body and not isinstance(body[name], str):
            raise InvalidField(f"{name} must be a string, got {_json_type(body[name])}", name)
    size = body.get("size", "512x512")
    # ASCII digits only: str.isdigit and int() also take "²" or "５".
    match = _SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise InvalidField(f"size must be WIDTHxHEIGHT in ASCII digits, such as 512x512, got {size!r}", "size")
    parts = match.groups()
    fields = {k: body[k] for k in ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed") if k in body}
    first = parse_generation_request({**fields, "width": int(parts[0]), "height": int(parts[1])}, limits)
    seeds = [(first.generation.seed + i) % (SEED_MAX + 1) for i in range(count)]
    return [ImageJob(dataclasses.replace(first.generation, seed=seed), "png") for seed in seeds]
