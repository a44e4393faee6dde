"""CORS when asked for, and metrics a dashboard can trust."""

from __future__ import annotations

from tests.engines import ControlledEngine


async def test_cors_preflight_and_exposed_headers(make_client) -> None:
    client = await make_client(ControlledEngine(), cors_origins="https://app.example")
    preflight = await client.options("/generate-image", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    for cache in ("MISS", "HIT"):
        reply = await client.post("/generate-image", json={"prompt": "cors"}, headers={"Origin": "https://app.example"})
        assert reply.status == 200 and reply.headers["X-Cache"] == cache
        # A page reads only the safelisted headers and the exposed ones: every other header the image carries is exposed.
        exposed = {h.strip().lower() for h in reply.headers["Access-Control-Expose-Headers"].split(",")}
        carried = {h.lower() for h in reply.headers if not h.lower().startswith("access-control-")}
        assert carried - exposed <= {"content-type", "content-length", "date", "server", "vary"}
    other = await client.post("/generate-image", json={"prompt": "cors"}, headers={"Origin": "https://elsewhere.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_cors_is_off_by_default(make_client) -> None:
    client = await make_client(ControlledEngine())
    reply = await client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in reply.headers


async def test_metrics_have_no_created_series_and_start_at_zero(make_client) -> None:
    client = await make_client(ControlledEngine())
    text = await (await client.get("/metrics")).text()
    assert "_created" not in text
    for series in ('sdxl_refused_requests_total{reason="queue_full"} 0.0', 'sdxl_cache_lookups_total{result="hit"} 0.0',
                   "sdxl_ready 1.0", "process_resident_memory_bytes"):
        assert series in text, series
    assert 'sdxl_engine_info{engine="controlled-test",model="test:controlled"' in text
    await client.post("/generate-image", json={"prompt": "outcomes"})
    await client.post("/generate-image", json={"prompt": "outcomes"})
    await client.post("/v1/images/generations", json={"prompt": "outcomes", "n": 99})
    text = await (await client.get("/metrics")).text()
    for series in ('sdxl_request_seconds_count{outcome="miss",route="/generate-image"} 1.0',
                   'sdxl_request_seconds_count{outcome="hit",route="/generate-image"} 1.0',
                   'sdxl_request_seconds_count{outcome="invalid",route="/v1/images/generations"} 1.0'):
        assert series in text, series
