"""POST /v1/images/edits, driven by the official `openai` client (multipart/form-data, as it sends it),
and its bad inputs refused before the model."""

from __future__ import annotations

import base64
import io

import aiohttp
import pytest
from PIL import Image

from tests.engines import ControlledEngine
from tests.helpers import generate
from tests.test_image_to_image_http import b64, encoded, picture


def test_openai_client_edits_an_image_like_generate_image(tiny_service):
    from openai import OpenAI

    client = OpenAI(base_url=tiny_service.base_url + "/v1", api_key="unused", max_retries=0)
    png = encoded(picture(256, 320, seed=21))
    result = client.images.edit(
        image=("in.png", png, "image/png"), prompt="a watercolour", n=2, size="256x256",
        response_format="b64_json", extra_body={"strength": 0.5, "seed": 40, "num_inference_steps": 2},
    )
    images = [base64.b64decode(item.b64_json) for item in result.data]
    assert len(images) == 2 and images[0] != images[1]
    assert Image.open(io.BytesIO(images[0])).size == (256, 256)
    # Image i is seed + i, on the same path (and cache) as /generate-image with the same image.
    same = generate(tiny_service.base_url, {"prompt": "a watercolour", "image": b64(png), "width": 256, "height": 256,
                                            "strength": 0.5, "seed": 41, "num_inference_steps": 2})
    assert same.status == 200 and same.headers["x-cache"] == "HIT" and same.body == images[1]
    # Without size, the input's own size.
    own = client.images.edit(image=("in.png", png, "image/png"), prompt="a watercolour", response_format="b64_json",
                             extra_body={"seed": 1, "num_inference_steps": 2})
    assert Image.open(io.BytesIO(base64.b64decode(own.data[0].b64_json))).size == (256, 320)


def form(**fields) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        if isinstance(value, bytes):
            data.add_field(name, value, filename="in.png", content_type="image/png")
        else:
            data.add_field(name, str(value))
    return data


PNG = encoded(picture())
EDIT_ERRORS = [
    ({"prompt": "a cat"}, "image", "required"),
    ({"image": b"not an image", "prompt": "a cat"}, "image", "not a PNG, JPEG or WebP"),
    ({"image": PNG, "prompt": "a cat", "strength": "2"}, "strength", "at most 1"),
    ({"image": PNG, "prompt": "a cat", "strength": "lots"}, "strength", "a number"),
    ({"image": PNG, "prompt": "a cat", "n": "two"}, "n", "an integer"),
    ({"image": PNG, "prompt": "a cat", "n": "9"}, "n", "from 1 to 4"),
    ({"image": PNG, "prompt": "a cat", "size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"image": PNG, "prompt": "a cat", "response_format": "jpeg"}, "response_format", "b64_json, url"),
    ({"image": PNG, "prompt": "a cat", "mask": PNG}, "mask", "unknown field"),
    ({"image": PNG, "prompt": ""}, "prompt", "empty"),
]


@pytest.mark.parametrize(("fields", "field", "words"), EDIT_ERRORS)
async def test_bad_edit_is_refused_before_the_model(make_client, fields, field, words):
    engine = ControlledEngine()
    client = await make_client(engine)
    reply = await client.post("/v1/images/edits", data=form(**fields))
    assert reply.status == 400, await reply.text()  # OpenAI's shape: a field that breaks its rule is a 400
    error = (await reply.json())["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error" and words in error["message"]
    assert engine.requests_seen == 0


async def test_an_edit_with_only_openais_fields_runs_two_steps_at_strength_half(make_client):
    """OpenAI's form has no steps and no strength: SDXL Turbo's model-card defaults run; our extras override them."""
    engine = ControlledEngine()
    client = await make_client(engine)
    reply = await client.post("/v1/images/edits", data=form(image=PNG, prompt="a cat", n=2))
    assert reply.status == 200, await reply.text()
    assert len((await reply.json())["data"]) == 2 and reply.headers["X-Num-Inference-Steps"] == "2"
    assert [(r.num_inference_steps, r.strength) for r in engine.calls[-1]] == [(2, 0.5)] * len(engine.calls[-1])
    for extras, expected in (({"strength": 0.3}, (4, 0.3)), ({"num_inference_steps": 3}, (3, 0.5))):
        reply = await client.post("/v1/images/edits", data=form(image=PNG, prompt="a cat", **extras))
        assert reply.status == 200, await reply.text()
        request = engine.calls[-1][0]
        assert (request.num_inference_steps, request.strength) == expected
    impossible = await client.post("/v1/images/edits", data=form(image=PNG, prompt="a cat", num_inference_steps=1))
    error = (await impossible.json())["error"]
    assert impossible.status == 400 and error["param"] == "strength"
    assert "num_inference_steps" in error["message"] and "int(1 x 0.5) = 0" in error["message"]


async def test_edit_must_be_multipart(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    reply = await client.post("/v1/images/edits", json={"prompt": "a cat", "image": b64(PNG)})
    assert reply.status == 415 and (await reply.json())["error"]["param"] == "Content-Type"
    assert engine.requests_seen == 0


async def test_openapi_describes_image_to_image_on_both_routes(make_client):
    client = await make_client(ControlledEngine())
    spec = await (await client.get("/openapi.json")).json()
    generate_fields = spec["paths"]["/generate-image"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    edit_schema = spec["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    for fields in (generate_fields, edit_schema["properties"]):
        strength = fields["strength"]  # OpenAPI 3.0: a boolean exclusiveMinimum beside the minimum
        assert (strength["minimum"], strength["exclusiveMinimum"], strength["maximum"]) == (0, True, 1)
        assert "Lanczos" in fields["image"]["description"]
    assert edit_schema["required"] == ["image", "prompt"]
