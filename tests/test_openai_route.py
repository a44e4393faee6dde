"""POST /v1/images/generations (OpenAI Images shape) and GET /openapi.json."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.engines import ControlledEngine
from tests.helpers import request


def test_openai_shape_returns_n_distinct_pngs_that_match_generate_image(tiny_service):
    url = tiny_service.base_url
    reply = request(url, "POST", "/v1/images/generations",
                    json_body={"prompt": "openai", "n": 2, "size": "256x256", "seed": 10})
    assert reply.status == 200, reply.body[:300]
    data = reply.json()["data"]
    images = [base64.b64decode(item["b64_json"]) for item in data]
    assert [item["seed"] for item in data] == [10, 11] and images[0] != images[1]
    assert Image.open(io.BytesIO(images[0])).size == (256, 256)
    same = request(url, "POST", "/generate-image", json_body={"prompt": "openai", "width": 256, "height": 256, "seed": 11})
    assert same.body == images[1] and same.headers["x-cache"] == "HIT"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "a", "n": 5}, "n"),
        ({"prompt": "a", "size": "big"}, "size"),
        ({"prompt": "a", "size": "513x512"}, "size"),
        ({"prompt": "a", "response_format": "jpeg"}, "response_format"),
        ({"prompt": "a", "output_format": "gif"}, "output_format"),
        ({"prompt": "a", "output_compression": 101}, "output_compression"),
        ({"prompt": "a", "quality": {"level": "hd"}}, "quality"),
        ({"n": 1}, "prompt"),
    ],
)
async def test_openai_bad_fields_are_named(make_client, body, field):
    engine = ControlledEngine()
    client = await make_client(engine)
    reply = await client.post("/v1/images/generations", json=body)
    error = (await reply.json())["error"]
    assert reply.status == 400 and error["param"] == field and error["type"] == "invalid_request_error"
    assert engine.requests_seen == 0


async def test_openapi_describes_the_routes_and_the_live_limits(make_client):
    client = await make_client(ControlledEngine(), max_steps=3)
    spec = await (await client.get("/openapi.json")).json()
    registered = {r.resource.canonical for r in client.app.router.routes() if r.method in ("GET", "POST")}
    documented = {"/generate-image", "/v1/images/generations", "/v1/images/edits", "/v1/models", "/images/{key}.{format}",
                  "/healthz", "/readyz", "/metrics"}
    assert set(spec["paths"]) == documented
    assert registered - documented == {"/", "/openapi.json", "/favicon.ico", "/static"}, "every other route is in the spec"
    assert all(op.get("operationId") and op.get("summary") for path in spec["paths"].values() for op in path.values())
    schema = spec["paths"]["/generate-image"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["num_inference_steps"]["maximum"] == 3


async def test_a_multipart_body_without_a_boundary_is_a_400(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    reply = await client.post("/v1/images/edits", data=b"", headers={"Content-Type": "multipart/form-data"})
    assert reply.status == 400 and (await reply.json())["error"]["type"] == "invalid_request_error"
    assert engine.requests_seen == 0
