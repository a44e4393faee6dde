"""GET /openapi.json: the HTTP contract, built from the same limits the schema enforces."""

from __future__ import annotations

from typing import Any

from engines.base import DEFAULT_STRENGTH
from service.schema import FORMATS, GUIDANCE_MAX, MIN_REQUEST_TIMEOUT, OPENAI_IGNORED, RESPONSE_FORMATS, SEED_MAX, RequestLimits

ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string", "nullable": True},
                "request_id": {"type": "string"},
            },
            "required": ["code", "message"],
        }
    },
}


# Headers every image answer carries, and the request headers the image routes read.
IMAGE_HEADERS = {
    "X-Seed": {"description": "the seed used; send it back for the same image", "schema": {"type": "integer"}},
    "X-Cache": {"description": "HIT, MISS or SHARED", "schema": {"type": "string"}},
    "X-Cache-Tier": {"description": "on a HIT, the tier it came from: memory, disk or redis", "schema": {"type": "string"}},
    "ETag": {"description": "the content key", "schema": {"type": "string"}},
    "Content-Location": {"description": "where GET /images/<key>.<format> serves these bytes", "schema": {"type": "string"}},
    "X-Engine": {"description": "the backend and numerics that made it", "schema": {"type": "string"}},
    "X-Num-Inference-Steps": {"description": "the steps asked for (from an image, int(steps x strength) of them run)",
                              "schema": {"type": "integer"}},
    "X-Request-Id": {"description": "the request's id, also in the logs", "schema": {"type": "string"}},
    "X-Prompt-Truncated": {"description": "the prompt fields CLIP cut at 77 tokens", "schema": {"type": "string"}},
}
# The /v1 answers carry n images in JSON: only what they share is a header.
OPENAI_HEADERS = {name: IMAGE_HEADERS[name] for name in ("X-Num-Inference-Steps", "X-Engine", "X-Request-Id")}
REQUEST_HEADERS = [
    {"name": "X-Request-Timeout", "in": "header", "schema": {"type": "number", "minimum": MIN_REQUEST_TIMEOUT},
     "description": "seconds, shorter than the server's --request-timeout"},
    {"name": "X-Request-Id", "in": "header", "schema": {"type": "string"},
     "description": "used as the request's id when it is 1-64 of A-Z a-z 0-9 . _ -; otherwise a new id is made"},
    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
    {"name": "Authorization", "in": "header", "schema": {"type": "string"}, "description": "Bearer <API key>, when keys are on"},
]


def _error_responses(*statuses: int) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(status): {"description": "error", "content": content} for status in statuses}


def openapi_spec(limits: RequestLimits) -> dict[str, Any]:
    engine = limits.engine
    size = {"type": "integer", "default": 512, "minimum": engine.min_size, "maximum": engine.max_size,
            "multipleOf": engine.size_multiple}
    common = {
        "prompt": {"type": "string", "minLength": 1, "maxLength": limits.max_prompt_chars, "pattern": "\\S"},
        "negative_prompt": {"type": "string", "default": "", "maxLength": limits.max_prompt_chars},
        "num_inference_steps": {"type": "integer", "default": 1, "minimum": 1, "maximum": limits.max_steps,
                                "description": "from an image, omitted: the fewest steps of which int(steps x strength) "
                                               "is at least 1 (2 at strength 0.5); X-Num-Inference-Steps says the count"},
        "guidance_scale": {"type": "number", "default": 0.0, "minimum": 0, "maximum": GUIDANCE_MAX},
        "seed": {"type": "integer", "minimum": -1, "maximum": SEED_MAX,
                 "description": "omitted: derived from the request; -1: a fresh random seed"},
    }
    strength = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "default": DEFAULT_STRENGTH,
                "description": "image-to-image only: how much of the image is redrawn; int(num_inference_steps x strength) "
                               "steps run and must be at least 1"}
    image_rule = (f"PNG, JPEG or WebP, at most {limits.max_input_pixels} pixels; the output is its size unless width "
                  "and height are given, then it is resized to exactly width x height with Lanczos")
    generate = {**common, "width": size, "height": size, "format": {"type": "string", "enum": list(FORMATS), "default": "png"},
                "image": {"type": "string", "minLength": 1, "format": "byte", "description": "image-to-image input: " + image_rule},
                "strength": strength}
    openai = {**common, "n": {"type": "integer", "default": 1, "minimum": 1, "maximum": limits.max_images},
              "size": {"type": "string", "default": "512x512", "pattern": r"^(auto|[0-9]+x[0-9]+)$"},
              "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "b64_json",
                                  "description": "url: an address on this service, /images/<key>.<format>"},
              "output_format": {"type": "string", "enum": list(FORMATS), "default": "png"},
              "output_compression": {"type": "integer", "minimum": 0, "maximum": 100, "description": "JPEG/WebP quality"},
              **{name: {"type": "string", "description": "accepted and ignored"} for name in OPENAI_IGNORED}}
    edit = {**{k: v for k, v in openai.items() if k != "size"}, "strength": strength,
            "image": {"type": "string", "format": "binary", "description": image_rule},
            "size": {"type": "string", "pattern": r"^\d+x\d+$", "description": "default: the image's own size"}}
    errors = _error_responses(400, 401, 408, 413, 415, 422, 429, 503, 504, 500)
    return {
        # 3.0: its JSON Schema dialect makes "integer" refuse 1.0, as the server does (3.1's takes it).
        "openapi": "3.0.3",
        "info": {"title": "SDXL Turbo image service", "version": "1"},
        "paths": {
            "/generate-image": {
                "post": {
                    "operationId": "generateImage",
                    "summary": "Text-to-image (or image-to-image with `image`): one image, cached by its content key",
                    "parameters": REQUEST_HEADERS,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "properties": generate, "required": ["prompt"], "additionalProperties": False}}}},
                    "responses": {
                        "200": {"description": "the image", "headers": IMAGE_HEADERS, "content": {m: {} for m in FORMATS.values()}},
                        "304": {"description": "If-None-Match matched the ETag"},
                        **errors,
                    },
                }
            },
            "/v1/images/generations": {
                "post": {
                    "operationId": "createImage",
                    "summary": "OpenAI's images.generate: n images as base64 or URLs; without a seed, a fresh one each call",
                    "parameters": REQUEST_HEADERS,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "properties": openai, "required": ["prompt"], "additionalProperties": False}}}},
                    "responses": {"200": {"description": "base64 images or their URLs", "headers": OPENAI_HEADERS,
                                           "content": {"application/json": {}}}, **errors},
                }
            },
            "/v1/images/edits": {
                "post": {
                    "operationId": "createImageEdit",
                    "summary": "OpenAI's images.edit (multipart)",
                    "parameters": REQUEST_HEADERS,
                    "description": "OpenAI's images.edit: image-to-image from a multipart form; image i uses seed + i",
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object", "properties": edit, "required": ["image", "prompt"], "additionalProperties": False}}}},
                    "responses": {"200": {"description": "base64 images or their URLs", "headers": OPENAI_HEADERS,
                                           "content": {"application/json": {}}}, **errors},
                }
            },
            "/v1/models": {"get": {"operationId": "listModels", "summary": "The one model served, as OpenAI's models.list reads it",
                                   "responses": {"200": {"description": "a list of one model", "content": {"application/json": {}}}}}},
            "/images/{key}.{format}": {"get": {
                "operationId": "getImage",
                "summary": "An image by its content address (the ETag); immutable, cacheable for a year",
                "parameters": [
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                    {"name": "format", "in": "path", "required": True, "schema": {"type": "string", "enum": list(FORMATS)}},
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "the image", "content": {m: {} for m in FORMATS.values()}},
                              "304": {"description": "If-None-Match matched"}, **_error_responses(404)},
            }},
            "/healthz": {"get": {"operationId": "healthz", "summary": "The process answers", "responses": {"200": {"description": "the process answers"}}}},
            "/readyz": {"get": {"operationId": "readyz", "summary": "Ready to serve: model loaded, warm-up image made, self-test passed",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "loading, failed or draining"}}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text format"}}}},
        },
        "components": {"schemas": {"Error": ERROR}},
    }
