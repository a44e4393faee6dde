"""GET /openapi.json: the HTTP contract, built from the same limits the schema enforces."""

from __future__ import annotations

from typing import Any

from engines.base import DEFAULT_STRENGTH
from service.schema import FORMATS, GUIDANCE_MAX, MAX_IMAGES_PER_REQUEST, SEED_MAX, RequestLimits

ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
                "request_id": {"type": "string"},
            },
            "required": ["code", "message"],
        }
    },
}


def _error_responses(*statuses: int) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(status): {"description": "error", "content": content} for status in statuses}


def openapi_spec(limits: RequestLimits) -> dict[str, Any]:
    engine = limits.engine
    size = {"type": "integer", "default": 512, "minimum": engine.min_size, "maximum": engine.max_size,
            "multipleOf": engine.size_multiple}
    common = {
        "prompt": {"type": "string", "minLength": 1, "maxLength": limits.max_prompt_chars},
        "negative_prompt": {"type": "string", "default": "", "maxLength": limits.max_prompt_chars},
        "num_inference_steps": {"type": "integer", "default": 1, "minimum": 1, "maximum": limits.max_steps},
        "guidance_scale": {"type": "number", "default": 0.0, "minimum": 0, "maximum": GUIDANCE_MAX},
        "seed": {"type": "integer", "minimum": -1, "maximum": SEED_MAX,
                 "description": "omitted: derived from the request; -1: a fresh random seed"},
    }
    strength = {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": DEFAULT_STRENGTH,
                "description": "image-to-image only: how much of the image is redrawn; int(num_inference_steps x strength) "
                               "steps run and must be at least 1"}
    image_rule = (f"PNG, JPEG or WebP, at most {limits.max_input_pixels} pixels; the output is its size unless width "
                  "and height are given, then it is resized to exactly width x height with Lanczos")
    generate = {**common, "width": size, "height": size, "format": {"type": "string", "enum": list(FORMATS), "default": "png"},
                "image": {"type": "string", "contentEncoding": "base64", "description": "image-to-image input: " + image_rule},
                "strength": strength}
    openai = {**common, "n": {"type": "integer", "default": 1, "minimum": 1, "maximum": MAX_IMAGES_PER_REQUEST},
              "size": {"type": "string", "default": "512x512", "pattern": r"^\d+x\d+$"},
              "response_format": {"type": "string", "enum": ["b64_json"]}, "model": {"type": "string"}, "user": {"type": "string"}}
    edit = {**{k: v for k, v in openai.items() if k != "size"}, "strength": strength,
            "image": {"type": "string", "format": "binary", "description": image_rule},
            "size": {"type": "string", "pattern": r"^\d+x\d+$", "description": "default: the image's own size"}}
    errors = _error_responses(400, 413, 415, 422, 429, 503, 504, 500)
    return {
        "openapi": "3.1.0",
        "info": {"title": "SDXL Turbo image service", "version": "1"},
        "paths": {
            "/generate-image": {
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "properties": generate, "required": ["prompt"], "additionalProperties": False}}}},
                    "responses": {
                        "200": {"description": "the image", "content": {m: {} for m in FORMATS.values()}},
                        "304": {"description": "If-None-Match matched the ETag"},
                        **errors,
                    },
                }
            },
            "/v1/images/generations": {
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "properties": openai, "required": ["prompt"], "additionalProperties": False}}}},
                    "responses": {"200": {"description": "base64 PNGs", "content": {"application/json": {}}}, **errors},
                }
            },
            "/v1/images/edits": {
                "post": {
                    "description": "OpenAI's images.edit: image-to-image from a multipart form; image i uses seed + i",
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object", "properties": edit, "required": ["image", "prompt"], "additionalProperties": False}}}},
                    "responses": {"200": {"description": "base64 PNGs", "content": {"application/json": {}}}, **errors},
                }
            },
            "/healthz": {"get": {"responses": {"200": {"description": "the process answers"}}}},
            "/readyz": {"get": {"responses": {"200": {"description": "ready"}, "503": {"description": "loading or draining"}}}},
            "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text format"}}}},
        },
        "components": {"schemas": {"Error": ERROR}},
    }
