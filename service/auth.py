"""API keys: who may use the service, and a short key id for logs, metrics and fairness (never the key).

Off when no keys file is configured. Keys are read once at start-up and kept only as SHA-256
digests; a presented key is hashed and compared with every stored digest in constant time
(hmac.compare_digest, no early exit), so timing says nothing about which key nearly matched.
OpenAI clients send `Authorization: Bearer <key>`; `X-API-Key: <key>` works too.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from aiohttp import web

from service.errors import ApiError

# Paths an orchestrator or a browser reaches without a key: probes, the page and its files, the contract.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
KEY_ID_LENGTH = 8  # hex digits of the key's SHA-256: enough to tell keys apart in a log, useless to an attacker

# The key id of the request being served (None when keys are off): read by logs, metrics and admission.
current_key_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("key_id", default=None)


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, "Authorization", headers={"WWW-Authenticate": 'Bearer realm="sdxl-turbo"'})


@dataclass(frozen=True)
class ApiKeys:
    digests: tuple[bytes, ...]

    @classmethod
    def read(cls, path: Path) -> ApiKeys:
        """One key per line; blank lines and lines starting with # are skipped. Raises ValueError."""
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read it ({exc.__class__.__name__}: {exc})") from exc
        return cls.read_lines(lines)

    @classmethod
    def read_lines(cls, lines: Sequence[str]) -> ApiKeys:
        keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not keys:
            raise ValueError("it holds no key (one key per line)")
        return cls(tuple(hashlib.sha256(key.encode()).digest() for key in keys))

    def identify(self, presented: str) -> str | None:
        """The key id of a valid key, else None."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored in self.digests:
            if hmac.compare_digest(stored, digest):
                found = stored
        return None if found is None else found.hex()[:KEY_ID_LENGTH]


def presented_key(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def auth_middleware(keys: ApiKeys, metrics_require_key: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or (path == "/metrics" and not metrics_require_key):
            return await handler(request)
        presented = presented_key(request)
        if presented is None:
            raise Unauthorized("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
        key_id = keys.identify(presented)
        if key_id is None:
            raise Unauthorized("the API key is not valid")
        current_key_id.set(key_id)
        return await handler(request)

    return middleware
