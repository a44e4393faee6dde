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
from types import MappingProxyType
from typing import Any, Mapping

from engines.base import DEFAULT_STRENGTH, EngineLimits, GenerationRequest
from service.errors import InvalidField, MalformedBody
from service.input_images import DEFAULT_MAX_INPUT_PIXELS, base64_bytes, load_pixels, open_image, oriented_size, pixels_sha256

SEED_MAX = 2**32 - 1
RANDOM_SEED = -1
MIN_REQUEST_TIMEOUT = 0.001  # seconds: X-Request-Timeout below a millisecond cannot be met, only refused later
GUIDANCE_MAX = 20.0
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FIELDS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "width", "height", "format",
          "image", "strength")


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_chars: int = 2000
    max_steps: int = 4
    engine: EngineLimits = EngineLimits()
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS  # image-to-image: checked from the header, before decoding
    max_images: int = 4  # OpenAI's n, at most


@dataclass(frozen=True)
class ImageJob:
    """A normalised request: what the engine runs, and how the answer is encoded."""

    generation: GenerationRequest
    output_format: str = "png"
    image_sha256: str | None = None  # image-to-image: of the pixels the engine gets (see service.input_images)
    quality: int | None = None  # JPEG/WebP quality from OpenAI's output_compression; None: the default

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
            # Only from an image, so that text-to-image keys stay what they were.
            **({} if self.image_sha256 is None else {"image_sha256": self.image_sha256, "strength": g.strength}),
            **({} if self.quality is None else {"quality": self.quality}),
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


def parse_generation_request(body: Any, limits: RequestLimits, accept: str | None = None,
                             names: Mapping[str, str] = MappingProxyType({})) -> ImageJob:
    """Validate and normalise a decoded JSON body; raises `InvalidField` or `MalformedBody`. `names`: the
    route's own names for these fields (OPENAI_NAMES), for the advice a message gives."""
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

    # 4. Image-to-image: the strength, and the input's header (its format and size; a bomb stops here).
    engine_limits = limits.engine
    image, strength = _input_image(body, limits)
    if image is None and "strength" in body:
        raise InvalidField("strength applies to image-to-image only: send an image too, or leave strength out", "strength")
    if image is not None:
        if "num_inference_steps" not in body:
            # The fewest steps of which one runs: 2 at the default strength, as SDXL Turbo's model card has it.
            steps = next((n for n in range(1, limits.max_steps + 1) if int(n * strength) >= 1), limits.max_steps)
        if int(steps * strength) < 1:
            advice = "raise strength" if steps == limits.max_steps else "raise num_inference_steps or strength"
            raise InvalidField(
                f"int(num_inference_steps x strength) must be at least 1 (the steps that run from an image), got "
                f"int({steps} x {strength:g}) = 0 with at most {limits.max_steps} steps: {advice}", "strength"
            )

    # 5. Size: multiples of 8 inside what the engine supports; from an image, its own size unless given.
    input_size = None if image is None else oriented_size(image)
    if input_size is not None and "width" not in body and "height" not in body and not engine_limits.supports(*input_size):
        raise InvalidField(
            f"image is {input_size[0]}x{input_size[1]}, not a size this engine supports "
            f"({engine_limits.describe_sizes()}); send {_sent(names, 'width', 'height')} to have it resized", "image"
        )
    defaults = {"width": 512, "height": 512} if input_size is None else dict(zip(("width", "height"), input_size))
    size = {name: _integer(body, name, defaults[name]) for name in ("width", "height")}
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

    # 6. Output format: the field, else the Accept header.
    output_format = body.get("format", preferred_format(accept))
    if not isinstance(output_format, str) or output_format not in FORMATS:
        raise InvalidField(f"format must be one of {', '.join(FORMATS)}, got {output_format!r}", "format")

    # 7. Normalise what does not change the picture, so that it does not change the cache key:
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

    # 8. The input's pixels at the output size (decoded only now that every cheap rule has passed).
    pixels = image_sha256 = None
    if image is not None:
        pixels = load_pixels(image, "image", width, height)
        image_sha256 = pixels_sha256(pixels)

    # 9. The concrete seed: derived when omitted, fresh when -1.
    if omitted_seed:
        from_image = {} if image_sha256 is None else {"image_sha256": image_sha256, "strength": strength}
        seed = derived_seed({**fields, **from_image})  # not the format: one picture, whatever its encoding
    elif seed == RANDOM_SEED:
        seed = secrets.randbelow(SEED_MAX + 1)
    generation = GenerationRequest(seed=seed, **fields, image=pixels, strength=strength)
    return ImageJob(generation, output_format, image_sha256)


def _sent(names: Mapping[str, str], *fields: str) -> str:
    """The fields as the route's clients name them: width and height are /v1's size."""
    return " and ".join(dict.fromkeys(names.get(field, field) for field in fields))


def has_input_image(body: Any) -> bool:
    """Whether parsing `body` decodes an image (blocking work: the routes run it off the event loop)."""
    return isinstance(body, dict) and body.get("image") is not None


def _input_image(body: dict[str, Any], limits: RequestLimits) -> tuple[Any, float]:
    """The input opened lazily (None without one) and the strength; `image` is base64 text (JSON) or
    the file's bytes (multipart)."""
    value = body.get("image")
    if value is None:
        return None, DEFAULT_STRENGTH
    if not limits.engine.image_to_image:
        raise InvalidField(f"image: this engine cannot start from an image: {limits.engine.image_to_image_reason}", "image")
    if isinstance(value, str):
        value = base64_bytes(value, "image")
    elif not isinstance(value, bytes):
        raise InvalidField(f"image must be a base64 string of a PNG, JPEG or WebP file, got {_json_type(value)}", "image")
    strength = body.get("strength", DEFAULT_STRENGTH)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise InvalidField(f"strength must be a number, got {_json_type(strength)}", "strength")
    if not (math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise InvalidField(f"strength must be above 0 and at most 1, got {strength}", "strength")
    return open_image(value, "image", limits.max_input_pixels), float(strength)


# --- POST /v1/images/generations: the OpenAI Images API shape over the same rules -----------------

# OpenAI's own fields, then ours. Accepted and ignored (documented in docs/api.md): quality, style,
# background, moderation, user, model (there is one model).
OPENAI_FIELDS = ("prompt", "n", "size", "response_format", "model", "user", "quality", "style", "background",
                 "moderation", "output_format", "output_compression", "negative_prompt", "num_inference_steps",
                 "guidance_scale", "seed")
OPENAI_IGNORED = {"quality": None, "style": None, "background": None, "moderation": None, "user": None, "model": None}
RESPONSE_FORMATS = ("b64_json", "url")
# What the JSON route's rules call a field, where /v1's clients send another: OpenAI's size is WIDTHxHEIGHT.
# Every /v1 error from those rules names the field the client sent (its `param`).
OPENAI_NAMES = {"width": "size", "height": "size"}
AUTO_SIZE = "512x512"  # size "auto": SDXL Turbo's own size
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


def parse_openai_request(body: Any, limits: RequestLimits, edit: bool = False) -> list[ImageJob]:
    """OpenAI's `prompt`, `n`, `size`, `response_format`, `output_format`..., plus our own fields; an edit
    (`edit`) also takes `image` and `strength`, and keeps the input's size unless `size` is given.

    Each of the n images is an ordinary job: image i uses seed + i, so every one is cacheable.
    """
    if not isinstance(body, dict):
        raise MalformedBody(f"the body must be a JSON object, got {_json_type(body)}")
    allowed = EDIT_FIELDS if edit else OPENAI_FIELDS
    for name in body:
        if name not in allowed:
            raise InvalidField(f"unknown field {name!r}; the fields are: {', '.join(allowed)}", name)
    count = _integer(body, "n", 1)
    if not 1 <= count <= limits.max_images:
        raise InvalidField(f"n must be from 1 to {limits.max_images}, got {count}", "n")
    response_format = body.get("response_format", "b64_json")
    if not isinstance(response_format, str) or response_format not in RESPONSE_FORMATS:
        raise InvalidField(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {response_format!r}", "response_format")
    for name in OPENAI_IGNORED:
        if name in body and not isinstance(body[name], str):
            raise InvalidField(f"{name} must be a string, got {_json_type(body[name])}", name)
    output_format = body.get("output_format", "png")
    if not isinstance(output_format, str) or output_format not in FORMATS:
        raise InvalidField(f"output_format must be one of {', '.join(FORMATS)}, got {output_format!r}", "output_format")
    quality = None
    if "output_compression" in body:
        quality = _integer(body, "output_compression", 100)
        if not 0 <= quality <= 100:
            raise InvalidField(f"output_compression must be from 0 to 100, got {quality}", "output_compression")
    size = body.get("size", None if edit else AUTO_SIZE)
    if size == "auto":
        size = None if edit else AUTO_SIZE
    passed = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "image", "strength")
    # Without a seed, a fresh image each call, as OpenAI does (/generate-image stays deterministic).
    fields = {"seed": RANDOM_SEED, **{k: body[k] for k in passed if k in body}}
    if size is not None:
        # ASCII digits only: str.isdigit and int() also take "²" or "５".
        match = _SIZE.fullmatch(size) if isinstance(size, str) else None
        if match is None:
            raise InvalidField(f"size must be WIDTHxHEIGHT in ASCII digits, such as 512x512, got {size!r}", "size")
        fields.update(width=int(match.group(1)), height=int(match.group(2)))
    try:
        first = parse_generation_request(fields, limits, names=OPENAI_NAMES)
    except InvalidField as exc:
        if exc.field not in OPENAI_NAMES:
            raise
        sent = OPENAI_NAMES[exc.field]
        raise InvalidField(f"{sent}: {exc.message}", sent) from None
    seeds = [(first.generation.seed + i) % (SEED_MAX + 1) for i in range(count)]
    quality = None if output_format == "png" else quality  # PNG is lossless: compression does not change it
    return [
        ImageJob(dataclasses.replace(first.generation, seed=seed), output_format, first.image_sha256, quality)
        for seed in seeds
    ]


# --- POST /v1/images/edits: OpenAI's multipart form over the same rules, from an image ------------

EDIT_FIELDS = (*OPENAI_FIELDS, "image", "strength")
_FORM_NUMBERS: dict[str, type] = {"n": int, "seed": int, "num_inference_steps": int, "guidance_scale": float, "strength": float,
                                   "output_compression": int}


def parse_openai_edit(form: dict[str, str | bytes], limits: RequestLimits) -> list[ImageJob]:
    """multipart/form-data, as OpenAI's client sends `images.edit`: every value is text but the image
    file's bytes; numbers are read from their text, then the JSON route's rules apply."""
    body: dict[str, Any] = {}
    for name, value in form.items():
        kind = _FORM_NUMBERS.get(name)
        if kind is None or not isinstance(value, str):
            body[name] = value
            continue
        try:
            body[name] = kind(value)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise InvalidField(f"{name} must be {noun}, got {value!r}", name) from None
    if "image" not in body:
        raise InvalidField("image is required: the PNG, JPEG or WebP file to start from", "image")
    return parse_openai_request(body, limits, edit=True)
