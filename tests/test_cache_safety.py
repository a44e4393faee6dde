"""The image cache under attack and under faults: planted code never runs, nothing broken is served,
and whatever state the cache directory is in, the service starts and serves."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import diskcache
import pytest

from service.cache import ImageCache
from service.cache_disk import frame, unframe
from service.state import CACHE
from tests.engines import ControlledEngine
from tests.helpers import REPO, metric

GOOD = {"prompt": "a cat", "seed": 1}


class Planted:
    """Unpickling this creates `marker`: the stand-in for code an attacker plants in the cache."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


async def faults(client, kind: str) -> float:
    return metric(await (await client.get("/metrics")).text(), "sdxl_cache_faults_total", kind=kind)


@pytest.mark.parametrize("where", ["database", "file"])
async def test_a_planted_pickle_never_runs_and_the_request_is_served_as_a_miss(make_client, tmp_path, where):
    engine = ControlledEngine()
    client = await make_client(engine, memory_cache_size=0)  # the disk tier under test, not the memory above it
    first = await client.post("/generate-image", json=GOOD)
    key = first.headers["ETag"].strip('"')
    marker = tmp_path / "planted-code-ran"
    # Written with diskcache's default Disk, as another process with the same uid could.
    min_file_size = 2**20 if where == "database" else 0
    with diskcache.Cache(str(tmp_path / "cache"), disk_min_file_size=min_file_size) as attacker:
        attacker.set(key, Planted(marker))
    again = await client.post("/generate-image", json=GOOD)
    assert not marker.exists(), "the cache unpickled a planted value"
    assert again.status == 200 and again.headers["X-Cache"] == "MISS"
    assert await again.read() == await first.read()
    assert await faults(client, "refused_not_raw_bytes") == 1
    third = await client.post("/generate-image", json=GOOD)
    assert third.headers["X-Cache"] == "HIT", "the planted entry was replaced by the real image"


async def test_a_truncated_value_file_is_a_miss_not_a_hit(make_client, tmp_path):
    engine = ControlledEngine()
    client = await make_client(engine, memory_cache_size=0)  # the disk tier under test, not the memory above it
    good = await (await client.post("/generate-image", json=GOOD)).read()
    with sqlite3.connect(tmp_path / "cache" / "cache.db") as db:
        (filename,) = db.execute("SELECT filename FROM Cache").fetchone()
    value_file = tmp_path / "cache" / filename
    value_file.write_bytes(value_file.read_bytes()[:1000])
    again = await client.post("/generate-image", json=GOOD)
    assert again.status == 200 and again.headers["X-Cache"] == "MISS"
    assert await again.read() == good
    assert engine.requests_seen == 2
    assert await faults(client, "corrupt_entry") == 1


def test_an_altered_byte_is_refused(tmp_path):
    cache = ImageCache(tmp_path / "c", 10**8)
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(100_000)
    cache.set("k", png)
    assert cache.get("k", "png") == png
    (value_file,) = (tmp_path / "c").rglob("*.val")
    data = bytearray(value_file.read_bytes())
    data[-1] ^= 1
    value_file.write_bytes(bytes(data))
    assert cache.get("k", "png") is None
    assert cache.faults.snapshot() == {"corrupt_entry": 1}


def test_reads_do_not_write(tmp_path):
    """Least-recently-stored eviction: a hit is a read, never a write transaction."""
    cache = ImageCache(tmp_path / "c", 10**8)
    cache.set("k", b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    connection = cache._cache._con
    before = connection.total_changes
    for _ in range(3):
        assert cache.get("k", "png") is not None
    assert connection.total_changes == before


def test_a_write_cut_short_by_a_full_disk_leaves_no_partial_file(tmp_path):
    """RLIMIT_FSIZE makes the write fail half-way (as a full disk does); nothing partial stays."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        from pathlib import Path
        from service.cache import ImageCache
        cache = ImageCache(Path({str(tmp_path / "c")!r}), 10**9)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
        cache.set("big", b"\\x89PNG\\r\\n\\x1a\\n" + bytes(1_000_000))
        assert cache.faults.snapshot() == {{"write_error": 1}}, cache.faults.snapshot()
        assert cache.get("big", "png") is None
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "image cache write failed" in result.stderr
    assert list((tmp_path / "c").rglob("*.val")) == []


def test_old_orphaned_value_files_are_removed_at_start_and_young_ones_kept(tmp_path):
    directory = tmp_path / "c"
    cache = ImageCache(directory, 10**8)
    png = b"\x89PNG\r\n\x1a\n" + bytes(100_000)
    cache.set("kept", png)
    cache.close()
    old = directory / "ab" / "cd" / "orphan-old.val"
    young = directory / "ab" / "cd" / "orphan-young.val"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"partial")
    young.write_bytes(b"being written by another process")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    reopened = ImageCache(directory, 10**8)
    assert not old.exists() and young.exists()
    assert reopened.get("kept", "png") == png
    assert reopened.faults.snapshot() == {"orphans_removed": 1}


# --- start-up, whatever the cache's state --------------------------------------------------------


def _bad_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:16] = b"not a database!!"
    db.write_bytes(bytes(data))


def _truncated(db: Path) -> None:
    db.write_bytes(db.read_bytes()[:1500])


def _random_bytes(db: Path) -> None:
    db.write_bytes(os.urandom(64 * 1024))


@pytest.mark.parametrize("damage", [_bad_header, _truncated, _random_bytes], ids=["bad-header", "truncated", "random"])
async def test_a_corrupt_database_is_set_aside_and_the_service_starts(make_client, tmp_path, damage):
    directory = tmp_path / "cache"
    seeded = ImageCache(directory, 10**8)
    for i in range(20):
        seeded.set(f"key-{i}", b"\x89PNG\r\n\x1a\n" + bytes(100))
    seeded.close()
    damage(directory / "cache.db")
    damaged = (directory / "cache.db").read_bytes()
    client = await make_client(ControlledEngine(), memory_cache_size=0)  # opens the cache at tmp_path/"cache"
    assert client.app[CACHE].enabled
    (aside,) = directory.glob("cache.db.corrupt-*")
    assert aside.read_bytes() == damaged, "the damaged file is kept as it was, for a person to look at"
    first = await client.post("/generate-image", json=GOOD)
    second = await client.post("/generate-image", json=GOOD)
    assert (first.status, first.headers["X-Cache"]) == (200, "MISS")
    assert (second.status, second.headers["X-Cache"]) == (200, "HIT")
    assert await faults(client, "set_aside") == 1


@contextlib.contextmanager
def read_only_directory(path: Path):
    """A directory this process cannot write: by its mode, or (for root, whom modes do not stop)
    a read-only tmpfs."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield path
        finally:
            path.chmod(0o700)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without the right to mount a read-only tmpfs")
    try:
        ImageCache(path, 10**8).close()  # an existing cache, as a read-only volume would hold
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


async def test_a_read_only_cache_directory_is_bypassed_and_the_service_serves(make_client, tmp_path, caplog):
    with read_only_directory(tmp_path / "cache"):
        client = await make_client(ControlledEngine(), memory_cache_size=0)
        assert not client.app[CACHE].enabled
        replies = [await client.post("/generate-image", json=GOOD) for _ in range(2)]
        assert [(r.status, r.headers["X-Cache"]) for r in replies] == [(200, "MISS"), (200, "MISS")]
        text = await (await client.get("/metrics")).text()
        assert metric(text, "sdxl_cache_enabled") == 0
        assert metric(text, "sdxl_cache_faults_total", kind="bypassed") == 1
    assert sum("serving without a cache" in r.getMessage() for r in caplog.records) == 1


def test_a_cache_dir_that_is_a_file_is_bypassed(tmp_path):
    (tmp_path / "not-a-directory").write_text("x")
    cache = ImageCache(tmp_path / "not-a-directory", 10**8)
    assert not cache.enabled and cache.faults.snapshot() == {"bypassed": 1}
    cache.set("k", b"x")
    assert cache.get("k", "png") is None


def test_an_existing_directory_keeps_its_mode_and_a_new_one_is_private(tmp_path):
    existing = tmp_path / "home"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    ImageCache(existing, 10**8).close()
    assert existing.stat().st_mode & 0o777 == 0o755, "an existing directory (say $HOME) is not chmod-ed"
    created = tmp_path / "new" / "images"
    ImageCache(created, 10**8).close()
    assert created.stat().st_mode & 0o777 == 0o700


def test_the_stored_value_is_the_image_alone_in_its_file_with_its_length_and_digest_in_the_database(tmp_path):
    cache = ImageCache(tmp_path / "c", 10**8)
    png = b"\x89PNG\r\n\x1a\n" + bytes(50_000)
    cache.set("k", png)
    (value_file,) = (tmp_path / "c").rglob("*.val")
    assert value_file.read_bytes() == png  # sent as it is
    with sqlite3.connect(tmp_path / "c" / "cache.db") as db:
        (header,) = db.execute("SELECT value FROM Cache").fetchone()
    assert unframe(header + png) == png


def test_a_file_in_the_older_layout_is_still_read(tmp_path):
    """Files written before the header moved to the database hold the frame whole: still hits."""
    cache = ImageCache(tmp_path / "c", 10**8)
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(50_000)
    cache.set("k", png)
    (value_file,) = (tmp_path / "c").rglob("*.val")
    value_file.write_bytes(frame(png))
    with sqlite3.connect(tmp_path / "c" / "cache.db") as db:
        db.execute("UPDATE Cache SET value = NULL")
    assert cache.get("k", "png") == png
