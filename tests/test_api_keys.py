"""API keys: off by default; with --api-keys-file every route but the probes, the page and the contract
needs a valid key; keys are never logged; one key cannot hold more than its share of the queue."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from service.auth import ApiKeys
from service.state import ADMISSION
from tests.engines import ControlledEngine
from tests.helpers import EXAMPLE_PROMPT, generate, request, running_service

KEYS = ("sk-alice-0123456789", "sk-bob-9876543210")
ALICE, BOB = ({"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]})


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory: pytest.TempPathFactory, presets_dir: Path):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# our clients\n{KEYS[0]}\n\n{KEYS[1]}\n")
    with running_service(
        ["--model", "tiny", "--precision", "fp32", "--presets-dir", str(presets_dir), "--api-keys-file", str(keys_file),
         "--cache-dir", str(tmp_path_factory.mktemp("keyed-cache"))]
    ) as service:
        yield service


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/generate-image", {"prompt": EXAMPLE_PROMPT}), ("POST", "/v1/images/generations", {"prompt": EXAMPLE_PROMPT})],
)
def test_image_routes_need_a_valid_key(keyed_service, method: str, path: str, body: dict) -> None:
    for headers, why in (({}, "required"), ({"Authorization": "Bearer sk-wrong"}, "not valid"), ({"X-API-Key": "nope"}, "not valid")):
        reply = request(keyed_service.base_url, method, path, json_body=body, headers=headers)
        assert reply.status == 401, (headers, reply.body[:200])
        assert reply.headers["www-authenticate"].startswith("Bearer")
        error = reply.json()["error"]
        field = error["param"] if path.startswith("/v1/") else error["field"]  # /v1 answers in OpenAI's shape
        assert error["code"] == "unauthorized" and why in error["message"] and field == "Authorization"
    for headers in (ALICE, BOB):
        assert request(keyed_service.base_url, method, path, json_body=body, headers=headers).status == 200


def test_probes_page_contract_and_metrics_stay_open(keyed_service) -> None:
    for path in ("/healthz", "/readyz", "/", "/openapi.json", "/metrics", "/favicon.ico"):
        assert request(keyed_service.base_url, "GET", path).status == 200, path


def test_logs_and_metrics_carry_a_key_id_never_the_key(keyed_service) -> None:
    reply = generate(keyed_service.base_url, {"prompt": "a key id in the log"}, headers=ALICE)
    assert reply.status == 200
    key_id = ApiKeys.read_lines([KEYS[0]]).identify(KEYS[0])
    assert len(key_id) == 8
    metrics = request(keyed_service.base_url, "GET", "/metrics").body.decode()
    assert f'sdxl_key_requests_total{{key="{key_id}",status="200"}}' in metrics
    log = keyed_service.log()
    assert all(key not in log for key in KEYS)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("key_id") == key_id for line in lines)


def test_a_keys_file_without_keys_is_refused_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    empty = tmp_path / "keys.txt"
    empty.write_text("# nobody yet\n")
    result = subprocess.run([sys.executable, "-m", "service", "--api-keys-file", str(empty)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --api-keys-file {empty}: it holds no key (one key per line)"


def job(seed: int, **fields) -> dict:
    return {"prompt": f"fairness {seed}", "seed": seed, **fields}


async def test_one_key_flooding_cannot_starve_another(make_client) -> None:
    engine = ControlledEngine()
    engine.release.clear()
    client = await make_client(engine, api_keys=ApiKeys.read_lines(KEYS), max_queue=4, max_queue_share=0.5)
    running = asyncio.create_task(client.post("/generate-image", json=job(0), headers=ALICE))
    await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
    alice = [asyncio.create_task(client.post("/generate-image", json=job(i), headers=ALICE)) for i in (1, 2)]
    for _ in range(200):
        if client.app[ADMISSION].depth == 2:
            break
        await asyncio.sleep(0.01)
    flooded = await client.post("/generate-image", json=job(3), headers=ALICE)
    assert flooded.status == 429
    assert "this API key already holds its share of the queue (50%)" in (await flooded.json())["error"]["message"]
    assert int(flooded.headers["Retry-After"]) >= 1
    bob = asyncio.create_task(client.post("/generate-image", json=job(4), headers=BOB))
    for _ in range(200):
        if client.app[ADMISSION].depth == 3:
            break
        await asyncio.sleep(0.01)
    assert client.app[ADMISSION].depth == 3, "Bob's request must find a place while Alice is at her share"
    engine.release.set()
    assert [r.status for r in await asyncio.gather(running, *alice, bob)] == [200, 200, 200, 200]


async def test_an_expensive_request_counts_for_what_it_costs(make_client) -> None:
    engine = ControlledEngine()
    engine.release.clear()
    client = await make_client(engine, max_queue=8)
    running = asyncio.create_task(client.post("/generate-image", json=job(0)))
    await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
    big = asyncio.create_task(client.post("/generate-image", json=job(1, width=1024, height=1024)))  # costs 4
    small = [asyncio.create_task(client.post("/generate-image", json=job(i))) for i in (2, 3, 4, 5)]  # 4 x 1
    for _ in range(200):
        if client.app[ADMISSION].depth == 5:
            break
        await asyncio.sleep(0.01)
    assert client.app[ADMISSION].depth == 5
    refused = await client.post("/generate-image", json=job(6))  # 8 units queued: a ninth does not fit
    assert refused.status == 429
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after >= 9  # nine units (running + queued) at the 1 s per unit assumed before any measurement
    engine.release.set()
    assert [r.status for r in await asyncio.gather(running, big, *small)] == [200] * 6
