"""A real redis-server on a free loopback port with a temporary directory, restartable on the same port.

Shared by the benchmarks (the Redis tier, two replicas sharing it) and by the tests (the shared tier,
the load balancer, the deploy manifests' Redis flags), so all run against the same kind of server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Sequence

import redis

from benchmarks.launcher import free_port

REDIS_SERVER = shutil.which("redis-server")
# As docs/cache.md asks of the shared tier: a cache, nothing persisted, least recently used out first.
CACHE_ARGS = ("--save", "", "--appendonly", "no", "--maxmemory-policy", "allkeys-lru")


class RedisServer:
    """redis-server on 127.0.0.1 with its working directory in `directory`, configured by `args`
    (flags as redis-server takes them on its command line)."""

    def __init__(self, directory: Path, args: Sequence[str] = CACHE_ARGS) -> None:
        self.port = free_port()
        self.directory = directory
        self.args = list(args)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if REDIS_SERVER is None:
            raise FileNotFoundError("redis-server is not installed (make test and make bench install it)")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory), *self.args],
            stdout=subprocess.DEVNULL,
        )
        client = self.client()
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: are its flags {self.args} valid?")
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
