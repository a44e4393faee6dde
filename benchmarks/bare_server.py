"""`python -m benchmarks.bare_server --body FILE`: the least an aiohttp server can do for an image request.

It reads the request body and answers with fixed bytes: what a cache hit costs with nothing but
aiohttp around it. The cache-hit section compares the service's hits with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from aiohttp import web

GENERATE_PATH = "/generate-image"


def create_app(body: bytes, content_type: str) -> web.Application:
    async def generate_image(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type=content_type)

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_post(GENERATE_PATH, generate_image)
    app.router.add_get("/readyz", readyz)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="file whose bytes every answer carries")
    parser.add_argument("--content-type", default="image/png")
    args = parser.parse_args(argv)
    web.run_app(create_app(args.body.read_bytes(), args.content_type), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
