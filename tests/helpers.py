"""Test helpers: start the real service as a subprocess and talk HTTP to it."""

from __future__ import annotations

import http.client
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

# The launcher is shared with the benchmarks, so both start the service the same way.
from benchmarks.launcher import REPO, ServiceProcess, free_port  # noqa: F401 (re-exported for tests)

EXAMPLE_PROMPT = "A cinematic shot a 3 maneki neko in South America."


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def image(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.body))
        image.load()
        return image


def request(
    base_url: str,
    method: str,
    path: str,
    json_body: Any = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> Reply:
    host, port = base_url.removeprefix("http://").split(":")
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def generate(base_url: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    return request(base_url, "POST", "/generate-image", json_body=payload, headers=headers)
