"""A real redis-server on a free loopback port with a temporary directory, nothing persisted.

Shared by the benchmarks (the Redis tier, two replicas sharing it) and by the tests
(tests/test_redis_cache.py), so both run the shared tier against the same kind of server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from benchmarks.launcher import free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """redis-server evicting least-recently-used keys, as the README asks of production; restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        if REDIS_SERVER is None:
            raise FileNotFoundError("redis-server is not installed (make test and make bench install it)")
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--maxmemory-policy", "allkeys-lru"],
            stdout=subprocess.DEVNULL,
        )
        client = self.client()
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
