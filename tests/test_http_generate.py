"""POST /generate-image against the real service (tiny model): images, headers, cache, determinism."""

from __future__ import annotations

import concurrent.futures

import numpy as np

from tests.helpers import generate, request


def test_example_png_has_the_asked_size_and_headers(tiny_service):
    reply = generate(tiny_service.base_url, {"prompt": "a lighthouse", "width": 640, "height": 384})
    assert reply.status == 200, reply.body[:300]
    image = reply.image()
    assert image.format == "PNG" and image.size == (640, 384) and image.mode == "RGB"
    assert reply.headers["x-engine"].startswith("torch-cpu-")
    assert reply.headers["etag"].startswith('"') and len(reply.headers["etag"]) == 66
    assert int(reply.headers["x-seed"]) >= 0
    assert reply.headers["x-request-id"]
    assert np.asarray(image).std() > 0, "an all-flat image means the decode went wrong"


def test_same_request_same_image_and_explicit_defaults_give_the_same_key(tiny_service):
    url = tiny_service.base_url
    first = generate(url, {"prompt": "determinism check"})
    explicit = generate(
        url,
        {"width": 512, "seed": int(first.headers["x-seed"]), "prompt": "  determinism check ", "height": 512,
         "num_inference_steps": 1, "guidance_scale": 0.0, "negative_prompt": "", "format": "png"},
    )
    assert first.status == explicit.status == 200
    assert first.headers["x-seed"] == explicit.headers["x-seed"]
    assert first.headers["etag"] == explicit.headers["etag"]
    assert first.body == explicit.body


def test_cache_miss_then_hit_with_identical_bytes(tiny_service):
    url = tiny_service.base_url
    payload = {"prompt": "cache me", "seed": 42, "num_inference_steps": 2}
    miss, hit = generate(url, payload), generate(url, payload)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert miss.body == hit.body and miss.headers["etag"] == hit.headers["etag"]


def test_a_new_seed_gives_a_new_image(tiny_service):
    url = tiny_service.base_url
    a = generate(url, {"prompt": "seeded", "seed": 1})
    b = generate(url, {"prompt": "seeded", "seed": 2})
    assert a.headers["x-seed"] == "1" and b.headers["x-seed"] == "2"
    assert a.body != b.body and a.headers["etag"] != b.headers["etag"]


def test_seed_minus_one_draws_a_fresh_seed_that_reproduces(tiny_service):
    url = tiny_service.base_url
    a = generate(url, {"prompt": "random seed", "seed": -1})
    b = generate(url, {"prompt": "random seed", "seed": -1})
    assert a.status == b.status == 200 and a.headers["x-seed"] != b.headers["x-seed"]
    again = generate(url, {"prompt": "random seed", "seed": int(a.headers["x-seed"])})
    assert again.body == a.body and again.headers["x-cache"] == "HIT"


def test_if_none_match_answers_304(tiny_service):
    url = tiny_service.base_url
    payload = {"prompt": "conditional", "seed": 5}
    first = generate(url, payload)
    again = generate(url, payload, headers={"If-None-Match": first.headers["etag"]})
    assert again.status == 304 and again.body == b""
    assert again.headers["etag"] == first.headers["etag"]
    other = generate(url, payload, headers={"If-None-Match": '"not-this-one"'})
    assert other.status == 200 and other.body == first.body


def test_guidance_and_steps_change_the_image(tiny_service):
    url = tiny_service.base_url
    base = {"prompt": "knobs", "seed": 9}
    plain = generate(url, base)
    guided = generate(url, {**base, "guidance_scale": 5.0, "negative_prompt": "dark"})
    stepped = generate(url, {**base, "num_inference_steps": 3})
    assert plain.status == guided.status == stepped.status == 200
    assert len({plain.body, guided.body, stepped.body}) == 3


def test_guidance_at_or_below_one_shares_the_plain_cache_entry(tiny_service):
    """Guidance <= 1 is off (and the negative prompt unread): the same picture, the same key."""
    url = tiny_service.base_url
    plain = generate(url, {"prompt": "no guidance", "seed": 3})
    low = generate(url, {"prompt": "no guidance", "seed": 3, "guidance_scale": 1.0, "negative_prompt": "ignored"})
    assert low.headers["etag"] == plain.headers["etag"] and low.headers["x-cache"] == "HIT"


def test_jpeg_and_webp_by_field_and_by_accept(tiny_service):
    url = tiny_service.base_url
    assert generate(url, {"prompt": "formats", "format": "jpeg"}).image().format == "JPEG"
    webp = generate(url, {"prompt": "formats"}, headers={"Accept": "image/webp"})
    assert webp.headers["content-type"] == "image/webp" and webp.image().format == "WEBP"
    png = generate(url, {"prompt": "formats"}, headers={"Accept": "image/webp, image/png"})
    assert png.image().format == "PNG"


def test_a_prompt_longer_than_clip_reads_is_cut_and_says_so(tiny_service):
    long_prompt = " ".join(["word"] * 120)
    reply = generate(tiny_service.base_url, {"prompt": long_prompt})
    assert reply.status == 200 and reply.headers["x-prompt-truncated"] == "prompt"
    short = generate(tiny_service.base_url, {"prompt": "short"})
    assert "x-prompt-truncated" not in short.headers


def test_identical_concurrent_requests_are_computed_once(tiny_service):
    url = tiny_service.base_url
    payload = {"prompt": "stampede", "seed": 77, "width": 1024, "height": 1024, "num_inference_steps": 4}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: generate(url, payload), range(8)))
    assert all(r.status == 200 for r in replies)
    assert len({r.body for r in replies}) == 1
    statuses = [r.headers["x-cache"] for r in replies]
    assert statuses.count("MISS") == 1, statuses
    assert set(statuses) <= {"MISS", "SHARED", "HIT"}


def test_index_page_and_health(tiny_service):
    page = request(tiny_service.base_url, "GET", "/")
    assert page.status == 200 and b'<script src="/static/app.js">' in page.body
    assert b"/generate-image" in request(tiny_service.base_url, "GET", "/static/app.js").body
    assert request(tiny_service.base_url, "GET", "/healthz").json() == {"status": "ok"}
    ready = request(tiny_service.base_url, "GET", "/readyz").json()
    assert ready["ready"] is True and ready["engine"].startswith("torch-") and ready["model"].startswith("preset:tiny")


async def test_every_image_answer_says_its_address_and_the_address_serves_those_bytes(make_client):
    """Content-Location: /images/<key>.<format>, on a miss, a hit and a 304, for every format and from an image."""
    from tests.engines import ControlledEngine
    from tests.test_image_to_image_http import GOOD

    client = await make_client(ControlledEngine())
    cases = [({"prompt": "addressed"}, {}, "png"), ({"prompt": "addressed", "format": "webp"}, {}, "webp"),
             ({"prompt": "addressed"}, {"Accept": "image/jpeg"}, "jpeg"), (GOOD, {}, "png")]
    for body, headers, output_format in cases:
        for cache in ("MISS", "HIT"):
            reply = await client.post("/generate-image", json=body, headers=headers)
            assert reply.status == 200 and reply.headers["X-Cache"] == cache, await reply.text()
            key = reply.headers["ETag"].strip('"')
            assert reply.headers["Content-Location"] == f"/images/{key}.{output_format}"
            served = await client.get(reply.headers["Content-Location"])
            assert served.status == 200 and served.content_type == reply.content_type
            assert await served.read() == await reply.read()
        unchanged = await client.post("/generate-image", json=body, headers={**headers, "If-None-Match": f'"{key}"'})
        assert unchanged.status == 304 and unchanged.headers["Content-Location"] == f"/images/{key}.{output_format}"
