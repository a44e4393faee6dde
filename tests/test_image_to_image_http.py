"""POST /generate-image with an input image: what the engine gets, the cache key, and every bad input
refused with a 4xx naming the field before the model sees it."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engines.base import EngineLimits
from tests.engines import ControlledEngine
from tests.helpers import generate


def encoded(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def picture(width: int = 256, height: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header says width x height: a bomb's header, a few bytes long."""
    data = bytearray(encoded(picture(1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


PNG = b64(encoded(picture()))
GOOD = {"prompt": "a cat", "image": PNG, "num_inference_steps": 2}

BAD_INPUTS = [
    # (body, field, words in the message)
    ({**GOOD, "image": b64(b"hello, not an image")}, "image", "not a PNG, JPEG or WebP"),
    ({**GOOD, "image": "!!! not base64 !!!"}, "image", "base64"),
    ({**GOOD, "image": ""}, "image", "empty"),
    ({**GOOD, "image": 5}, "image", "base64 string"),
    ({**GOOD, "image": b64(encoded(picture())[:2000])}, "image", "truncated"),
    ({**GOOD, "image": b64(encoded(picture(), "GIF"))}, "image", "not a PNG, JPEG or WebP"),
    ({**GOOD, "image": b64(png_claiming(100_000, 100_000))}, "image", "pixels"),
    ({**GOOD, "image": b64(png_claiming(5000, 5000))}, "image", "more than 16777216 pixels"),
    ({**GOOD, "strength": 0}, "strength", "above 0 and at most 1"),
    ({**GOOD, "strength": 1.5}, "strength", "above 0 and at most 1"),
    ({**GOOD, "strength": -0.1}, "strength", "above 0 and at most 1"),
    ({**GOOD, "strength": "half"}, "strength", "number"),
    ({**GOOD, "strength": True}, "strength", "number"),
    ({"prompt": "a cat", "strength": 0.5}, "strength", "image-to-image only"),
    ({**GOOD, "num_inference_steps": 1, "strength": 0.5}, "strength", "raise num_inference_steps or strength"),
    ({**GOOD, "num_inference_steps": 3, "strength": 0.3}, "strength", "int(3 x 0.3) = 0"),
    ({"prompt": "a cat", "image": PNG, "strength": 0.2}, "strength", "int(4 x 0.2) = 0 with at most 4 steps: raise strength"),
    ({**GOOD, "image": b64(encoded(picture(300, 200)))}, "image", "send width and height"),
    ({**GOOD, "image": b64(encoded(picture(300, 200))), "width": 300, "height": 200}, "width", "multiple of 8"),
    ({**GOOD, "width": 2048, "height": 256}, "width", "256 to 1024"),
]


@pytest.mark.parametrize(("body", "field", "words"), BAD_INPUTS)
async def test_bad_image_to_image_input_is_refused_before_the_model(make_client, body, field, words):
    engine = ControlledEngine()
    client = await make_client(engine)
    reply = await client.post("/generate-image", json=body)
    assert reply.status == 422, await reply.text()
    error = (await reply.json())["error"]
    assert error["field"] == field and error["code"] == "invalid_field"
    assert words in error["message"]
    assert engine.requests_seen == 0


async def test_without_num_inference_steps_an_image_gets_the_fewest_steps_that_run(make_client):
    """Omitted, the steps from an image are the smallest count with int(steps x strength) >= 1, said in
    X-Num-Inference-Steps and keyed like that count sent explicitly."""
    engine = ControlledEngine()
    client = await make_client(engine)
    body = {"prompt": "a cat", "image": PNG, "seed": 3}
    for strength, steps in ((None, 2), (0.3, 4), (0.75, 2), (1.0, 1)):
        asked = body if strength is None else {**body, "strength": strength}
        reply = await client.post("/generate-image", json=asked)
        assert reply.status == 200, await reply.text()
        assert reply.headers["X-Num-Inference-Steps"] == str(steps)
        assert engine.calls[-1][0].num_inference_steps == steps
    explicit = await client.post("/generate-image", json={**body, "num_inference_steps": 2})
    first = await client.post("/generate-image", json=body)
    assert explicit.headers["X-Cache"] == "HIT" and explicit.headers["ETag"] == first.headers["ETag"]
    text = await client.post("/generate-image", json={"prompt": "a cat"})
    assert text.headers["X-Num-Inference-Steps"] == "1", "text-to-image keeps its one step"


async def test_a_small_pixel_limit_is_checked_from_the_header(make_client):
    engine = ControlledEngine()
    client = await make_client(engine, max_input_pixels=128 * 128)
    reply = await client.post("/generate-image", json=GOOD)
    assert reply.status == 422 and "256x256, more than 16384 pixels" in (await reply.json())["error"]["message"]
    assert engine.requests_seen == 0


async def test_body_over_the_image_routes_limit_is_413_naming_it(make_client):
    engine = ControlledEngine()
    client = await make_client(engine, max_image_body_bytes=100_000)
    reply = await client.post("/generate-image", json={**GOOD, "image": b64(encoded(picture(512, 512)))})
    assert reply.status == 413
    error = (await reply.json())["error"]
    assert error["code"] == "body_too_large" and "100000 bytes" in error["message"] and error["field"] == "image"
    # The other JSON routes keep the small limit.
    small = await client.post("/v1/images/generations", json={"prompt": "x" * 70_000})
    assert small.status == 413
    assert engine.requests_seen == 0


async def test_an_engine_without_a_vae_encoder_says_it_needs_a_rebuild(make_client):
    engine = ControlledEngine(limits=EngineLimits(image_to_image=False, image_to_image_reason="rebuild with `X`"))
    client = await make_client(engine)
    reply = await client.post("/generate-image", json=GOOD)
    assert reply.status == 422
    error = (await reply.json())["error"]
    assert error["field"] == "image" and "rebuild with `X`" in error["message"]
    text = await client.post("/generate-image", json={"prompt": "a cat"})
    assert text.status == 200, "text-to-image still works"


async def test_the_engine_gets_the_input_pixels_and_its_size(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    pixels = picture(384, 256)
    reply = await client.post("/generate-image", json={**GOOD, "image": b64(encoded(pixels)), "strength": 0.75})
    assert reply.status == 200, await reply.text()
    assert Image.open(io.BytesIO(await reply.read())).size == (384, 256), "the output is the input's size"
    (request,) = engine.calls[-1]
    assert (request.width, request.height, request.strength) == (384, 256, 0.75)
    assert np.array_equal(request.image, pixels)


async def test_width_and_height_resize_the_input_with_lanczos(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    pixels = picture(300, 200)
    reply = await client.post("/generate-image", json={**GOOD, "image": b64(encoded(pixels)), "width": 512, "height": 256})
    assert reply.status == 200
    (request,) = engine.calls[-1]
    expected = np.asarray(Image.fromarray(pixels).resize((512, 256), Image.Resampling.LANCZOS))
    assert request.image.shape == (256, 512, 3) and np.array_equal(request.image, expected)


async def test_jpeg_webp_and_alpha_inputs_are_read_as_rgb(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    rgba = np.dstack([picture(), np.full((256, 256), 128, np.uint8)])
    for data in (encoded(picture(), "JPEG"), encoded(picture(), "WEBP"), encoded(rgba)):
        reply = await client.post("/generate-image", json={**GOOD, "image": "data:image/png;base64," + b64(data)})
        assert reply.status == 200, await reply.text()
        assert engine.calls[-1][0].image.shape == (256, 256, 3)


async def test_same_pixels_in_another_encoding_share_the_key_and_strength_changes_it(make_client):
    engine = ControlledEngine()
    client = await make_client(engine)
    pixels = picture(seed=3)
    fast = b64(encoded(pixels, compress_level=1))
    small = b64(encoded(pixels, compress_level=9, optimize=True))
    assert fast != small
    first = await client.post("/generate-image", json={**GOOD, "image": fast, "seed": 5})
    again = await client.post("/generate-image", json={**GOOD, "image": small, "seed": 5})
    assert first.headers["ETag"] == again.headers["ETag"]
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    stronger = await client.post("/generate-image", json={**GOOD, "image": small, "seed": 5, "strength": 1.0})
    other_picture = await client.post("/generate-image", json={**GOOD, "image": b64(encoded(picture(seed=4))), "seed": 5})
    text_only = await client.post("/generate-image", json={"prompt": "a cat", "num_inference_steps": 2, "seed": 5, "width": 256, "height": 256})
    etags = {r.headers["ETag"] for r in (first, stronger, other_picture, text_only)}
    assert len(etags) == 4
    assert engine.requests_seen == 4


async def test_identical_image_requests_in_flight_are_computed_once(make_client):
    engine = ControlledEngine()
    engine.release.clear()
    client = await make_client(engine)
    body = {**GOOD, "seed": 9}
    first = asyncio.ensure_future(client.post("/generate-image", json=body))
    await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
    second = asyncio.ensure_future(client.post("/generate-image", json={**body, "image": b64(encoded(picture(), compress_level=0))}))
    await asyncio.sleep(0.3)
    engine.release.set()
    replies = await asyncio.gather(first, second)
    assert sorted(r.headers["X-Cache"] for r in replies) == ["MISS", "SHARED"]
    assert engine.requests_seen == 1


def test_tiny_service_makes_an_image_from_an_image(tiny_service):
    """The real model: the input's size comes back, and the input and the strength change the picture."""
    url = tiny_service.base_url
    pixels = picture(320, 256, seed=11)
    body = {"prompt": "a watercolour", "image": b64(encoded(pixels)), "num_inference_steps": 2, "strength": 0.5, "seed": 1}
    reply = generate(url, body)
    assert reply.status == 200, reply.body[:300]
    image = reply.image()
    assert image.size == (320, 256) and image.mode == "RGB"
    other_input = generate(url, {**body, "image": b64(encoded(picture(320, 256, seed=12)))})
    other_strength = generate(url, {**body, "strength": 1.0})
    assert other_input.status == other_strength.status == 200
    assert reply.body != other_input.body and reply.body != other_strength.body
    assert generate(url, body).headers["x-cache"] == "HIT"


async def test_a_large_json_body_is_decoded_off_the_event_loop(make_client, monkeypatch):
    """An image body is megabytes of JSON: parsing it is blocking work; a plain prompt stays on the loop."""
    import threading

    from service import routes

    decoded_on = []
    real = routes.decode_json_body

    def recording(raw: bytes):
        decoded_on.append((len(raw) > routes.INLINE_JSON_BYTES, threading.current_thread() is threading.main_thread()))
        return real(raw)

    monkeypatch.setattr(routes, "decode_json_body", recording)
    client = await make_client(ControlledEngine())
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # incompressible: a large PNG
    assert (await client.post("/generate-image", json={**GOOD, "image": b64(encoded(noise))})).status == 200
    assert (await client.post("/generate-image", json={"prompt": "a cat, no image"})).status == 200
    assert decoded_on == [(True, False), (False, True)]
