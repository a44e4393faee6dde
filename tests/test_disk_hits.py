"""Disk hits sent from the cache's file (sendfile), checked once per change of the file: a byte
flipped or a file cut short after that check is still never served."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

import service.cache_disk
from tests.engines import ControlledEngine
from tests.helpers import metric

GOOD = {"prompt": "a lighthouse on disk", "seed": 3}
MARK_AFTER_S = 0.2  # shortened from a second: how old a file's last change must be before it is marked checked


@pytest.fixture
def short_mark_age(monkeypatch):
    monkeypatch.setattr(service.cache_disk, "MARK_AFTER_S", MARK_AFTER_S)


def value_file(cache_dir: Path) -> Path:
    with sqlite3.connect(cache_dir / "cache.db") as db:
        (filename,) = db.execute("SELECT filename FROM Cache").fetchone()
    return cache_dir / filename


async def disk_hit(client) -> bytes:  # type: ignore[no-untyped-def]
    reply = await client.post("/generate-image", json=GOOD)
    assert (reply.status, reply.headers["X-Cache"], reply.headers.get("X-Cache-Tier")) == (200, "HIT", "disk")
    return await reply.read()


async def test_a_disk_hit_is_checked_once_then_sent_without_hashing(make_client, short_mark_age, monkeypatch):
    client = await make_client(ControlledEngine(), memory_cache_size=0)  # the disk tier under test
    made = await (await client.post("/generate-image", json=GOOD)).read()
    time.sleep(MARK_AFTER_S * 1.5)
    assert await disk_hit(client) == made  # checked whole (SHA-256) and marked
    digests = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(service.cache_disk.hashlib, "sha256", lambda *a: digests.append(1) or real_sha256(*a))
    for _ in range(3):
        assert await disk_hit(client) == made
    assert digests == [], "a disk hit of an unchanged, already checked file hashed it again"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_a_file_changed_after_its_check_is_dropped_and_made_again(make_client, tmp_path, short_mark_age, damage):
    engine = ControlledEngine()
    client = await make_client(engine, memory_cache_size=0)
    made = await (await client.post("/generate-image", json=GOOD)).read()
    time.sleep(MARK_AFTER_S * 1.5)
    assert await disk_hit(client) == made  # marked checked
    path = value_file(tmp_path / "cache")
    if damage == "flip":  # same size, in place: only its change time tells
        with open(path, "r+b") as file:
            file.seek(len(made) // 2)
            byte = file.read(1)
            file.seek(len(made) // 2)
            file.write(bytes([byte[0] ^ 0x01]))
    else:
        path.write_bytes(path.read_bytes()[:-100])
    again = await client.post("/generate-image", json=GOOD)
    assert (again.status, again.headers["X-Cache"]) == (200, "MISS")
    assert await again.read() == made and engine.requests_seen == 2
    text = await (await client.get("/metrics")).text()
    assert metric(text, "sdxl_cache_faults_total", kind="corrupt_entry") == 1
    assert await disk_hit(client) == made, "the bad entry was replaced by the image made again"
