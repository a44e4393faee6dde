"""RedisTier: the cache tier replicas share, and the leases that let them compute an image once.

Values are the entry's raw bytes (service/cache_entry.py), never pickled, stored with a TTL; the
server evicts under its own `maxmemory-policy allkeys-lru`. Every call has a short timeout; while
Redis is down, one call a second probes it and the rest skip it (a miss in this tier, no waiting).

Work across replicas: the first replica to miss takes a lease (`SET <key>:lease <replica> NX PX`),
renews it while it computes, stores the image, then drops the lease. The others poll the image key
with a short backoff (no pub/sub: a poll cannot miss a message sent before it subscribed, and it
survives a Redis restart) and, on each poll, try the lease again, so a lease whose owner died
expires and the next replica takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.cache_entry import Entry, decode, encode
from service.tiers import TierHealth, is_image

logger = logging.getLogger(__name__)

TIMEOUT_S = 0.5
RETRY_AFTER_S = 1.0  # while down: how often a request probes Redis (the others skip it)
LEASE_MS = 5000
POLL_S = (0.02, 0.25)  # first and longest wait between polls of a key another replica computes
_PREFIX = "sdxl:image:"
# Renew or drop a lease only while it is still ours (it may have expired and gone to another replica).
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class RedisTier:
    def __init__(self, url: str, ttl_s: float, lease_ms: int = LEASE_MS) -> None:
        # from_url only parses: the pool connects on first use, so a Redis that is down never stops start-up.
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, max_connections=64
        )
        self.ttl_ms = int(ttl_s * 1000)
        self.lease_ms = lease_ms
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.health = TierHealth("redis")
        self._skip_until = 0.0

    # --- the tier --------------------------------------------------------------------------------------

    async def get(self, key: str, output_format: str) -> Entry | None:
        data = await self._call(self._client.get(_PREFIX + key))
        if not data:
            return None
        try:
            entry = decode(data)
        except ValueError:
            entry = None
        if entry is None or not is_image(entry.image, output_format):
            logger.error("redis cache entry %s is not a %s image; treating it as a miss", key, output_format)
            return None
        return entry

    async def set(self, key: str, entry: Entry) -> None:
        await self._call(self._client.set(_PREFIX + key, encode(entry), px=self.ttl_ms))

    async def close(self) -> None:
        with contextlib.suppress(*_ERRORS):
            await self._client.aclose()

    # --- leases ----------------------------------------------------------------------------------------

    async def try_lease(self, key: str) -> bool | None:
        """True: this replica holds the lease now; False: another does; None: Redis cannot say."""
        taken = await self._call(self._client.set(_PREFIX + key + ":lease", self.replica, nx=True, px=self.lease_ms))
        if taken is None and not self.health.up:
            return None
        return bool(taken)

    @contextlib.asynccontextmanager
    async def holding(self, key: str) -> AsyncIterator[None]:
        """Keep a taken lease alive while the block computes; drop it after (stored or failed)."""
        renewer = asyncio.create_task(self._renew(key), name="lease-renewal")
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            await self._call(self._client.eval(_RELEASE, 1, _PREFIX + key + ":lease", self.replica))

    async def _renew(self, key: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            await self._call(self._client.eval(_RENEW, 1, _PREFIX + key + ":lease", self.replica, self.lease_ms))

    async def wait_for(self, key: str, output_format: str) -> Entry | None:
        """The entry another replica is computing, once stored; None when its lease ends without
        one and this replica has taken the lease over, or Redis stopped answering. The caller's
        deadline bounds the wait (it cancels this)."""
        pause = POLL_S[0]
        while True:
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_S[1])
            entry = await self.get(key, output_format)
            if entry is not None:
                return entry
            lease = await self.try_lease(key)
            if lease is not False:  # ours now (the owner died or gave up), or Redis is gone
                return None

    # --- faults ----------------------------------------------------------------------------------------

    async def _call(self, command):  # type: ignore[no-untyped-def]
        """The command's result, or None when Redis fails (logged once per outage, counted)."""
        if not self.health.up and time.monotonic() < self._skip_until:
            command.close()  # not awaited: skipping it while Redis is down
            return None
        try:
            result = await asyncio.wait_for(command, TIMEOUT_S * 2)
        except _ERRORS as exc:
            self.health.failed(exc)
            self._skip_until = time.monotonic() + RETRY_AFTER_S
            return None
        self.health.ok()
        return result
