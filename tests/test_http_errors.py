"""Every bad input gets a JSON error naming the field and the rule, and never reaches the model."""

from __future__ import annotations

import json

import pytest

from tests.engines import ControlledEngine
from tests.helpers import request

GOOD = {"prompt": "a cat"}

FIELD_ERRORS = [
    # (body, status, field, words in the message)
    ({}, 422, "prompt", "required"),
    ({"prompt": ""}, 422, "prompt", "empty"),
    ({"prompt": "   "}, 422, "prompt", "empty"),
    ({"prompt": 5}, 422, "prompt", "string"),
    ({"prompt": None}, 422, "prompt", "string"),
    ({"prompt": ["a"]}, 422, "prompt", "string"),
    ({"prompt": "x" * 2001}, 422, "prompt", "at most 2000"),
    ({**GOOD, "negative_prompt": 3}, 422, "negative_prompt", "string"),
    ({**GOOD, "num_inference_steps": 0}, 422, "num_inference_steps", "from 1 to 4"),
    ({**GOOD, "num_inference_steps": 5}, 422, "num_inference_steps", "from 1 to 4"),
    ({**GOOD, "num_inference_steps": 1.5}, 422, "num_inference_steps", "integer"),
    ({**GOOD, "num_inference_steps": "2"}, 422, "num_inference_steps", "integer"),
    ({**GOOD, "num_inference_steps": True}, 422, "num_inference_steps", "boolean"),
    ({**GOOD, "guidance_scale": -0.5}, 422, "guidance_scale", "from 0 to 20"),
    ({**GOOD, "guidance_scale": 21}, 422, "guidance_scale", "from 0 to 20"),
    ({**GOOD, "guidance_scale": "high"}, 422, "guidance_scale", "number"),
    ({**GOOD, "guidance_scale": False}, 422, "guidance_scale", "boolean"),
    ({**GOOD, "seed": -2}, 422, "seed", "-1"),
    ({**GOOD, "seed": 2**32}, 422, "seed", "4294967295"),
    ({**GOOD, "seed": 1.0}, 422, "seed", "integer"),
    ({**GOOD, "seed": True}, 422, "seed", "boolean"),
    ({**GOOD, "width": 513}, 422, "width", "multiple of 8"),
    ({**GOOD, "height": 100}, 422, "height", "multiple of 8"),
    ({**GOOD, "width": 2048}, 422, "width", "256 to 1024"),
    ({**GOOD, "height": 128}, 422, "height", "256 to 1024"),
    ({**GOOD, "width": 0}, 422, "width", "256 to 1024"),
    ({**GOOD, "width": "512"}, 422, "width", "integer"),
    ({**GOOD, "format": "gif"}, 422, "format", "png, jpeg, webp"),
    ({**GOOD, "steps": 2}, 422, "steps", "unknown field"),
]


@pytest.mark.parametrize(("body", "status", "field", "words"), FIELD_ERRORS)
async def test_bad_field_is_refused_before_the_model(make_client, body, status, field, words):
    engine = ControlledEngine()
    client = await make_client(engine)
    reply = await client.post("/generate-image", json=body)
    assert reply.status == status
    error = (await reply.json())["error"]
    assert error["field"] == field and error["code"] == "invalid_field"
    assert words in error["message"]
    assert engine.requests_seen == 0


RAW_ERRORS = [
    # (raw body, content type, status, code)
    (b"{not json", "application/json", 400, "malformed_body"),
    (b"", "application/json", 400, "malformed_body"),
    (b'{"prompt": NaN}', "application/json", 400, "malformed_body"),
    (b'{"prompt": "a", "guidance_scale": Infinity}', "application/json", 400, "malformed_body"),
    (b"\xff\xfe", "application/json", 400, "malformed_body"),
    (b'["a cat"]', "application/json", 400, "malformed_body"),
    (b'"a cat"', "application/json", 400, "malformed_body"),
    (b'{"prompt": "a cat"}', "text/plain", 415, "unsupported_media_type"),
    (b"prompt=a+cat", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (json.dumps({"prompt": "x" * 70_000}).encode(), "application/json", 413, "body_too_large"),
]


@pytest.mark.parametrize(("raw", "content_type", "status", "code"), RAW_ERRORS)
async def test_bad_body_is_refused_with_json(make_client, raw, content_type, status, code):
    engine = ControlledEngine()
    # /generate-image carries input images, so its limit is --max-image-body-bytes (16 MiB by default).
    client = await make_client(engine, max_image_body_bytes=64 * 1024)
    reply = await client.post("/generate-image", data=raw, headers={"Content-Type": content_type})
    assert reply.status == status
    assert reply.content_type == "application/json"
    assert (await reply.json())["error"]["code"] == code
    assert engine.requests_seen == 0


async def test_unknown_path_and_method_are_json(make_client):
    client = await make_client(ControlledEngine())
    missing = await client.get("/nope")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    wrong = await client.get("/generate-image")
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"]
    assert (await wrong.json())["error"]["code"] == "method_not_allowed"


async def test_bad_timeout_header_names_the_header(make_client):
    client = await make_client(ControlledEngine())
    reply = await client.post("/generate-image", json=GOOD, headers={"X-Request-Timeout": "soon"})
    assert reply.status == 422 and (await reply.json())["error"]["field"] == "X-Request-Timeout"


async def test_engine_failure_is_a_500_with_the_request_id(make_client):
    engine = ControlledEngine()
    engine.generate = lambda requests: 1 / 0  # the engine breaks
    client = await make_client(engine)
    reply = await client.post("/generate-image", json=GOOD, headers={"X-Request-Id": "trace-123"})
    assert reply.status == 500 and reply.headers["X-Request-Id"] == "trace-123"
    error = (await reply.json())["error"]
    assert error["code"] == "internal_error" and error["request_id"] == "trace-123"
    assert "Traceback" not in error["message"] and "ZeroDivision" not in error["message"]
    # A failed generation is never cached: the next try runs the engine again.
    engine.generate = ControlledEngine.generate.__get__(engine)
    again = await client.post("/generate-image", json=GOOD)
    assert again.status == 200 and again.headers["X-Cache"] == "MISS"


def test_real_service_answers_bad_input_with_json(tiny_service):
    """The subprocess too: a bad request over a real socket gets JSON, not a traceback."""
    reply = request(tiny_service.base_url, "POST", "/generate-image", body=b"{oops", headers={"Content-Type": "application/json"})
    assert reply.status == 400 and reply.json()["error"]["code"] == "malformed_body"
    big = request(tiny_service.base_url, "POST", "/generate-image", body=b"x" * (16 * 1024**2 + 1), headers={"Content-Type": "application/json"})
    assert big.status == 413 and big.json()["error"]["code"] == "body_too_large"
