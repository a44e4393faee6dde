"""`python -m service`: read settings, pick the engine, serve until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Sequence

from aiohttp import web

from engines.base import EngineUnavailable
from service.auth import ApiKeys
from service.app import create_app
from service.cache import ImageCache
from service.logs import queued_logging, route_library_logs
from service.server import ServiceRunner, runner_options
from service.settings import Settings, SettingsError, load_settings
from service.state import ADMISSION, READINESS, drain

logger = logging.getLogger("service")


async def serve(app: web.Application, settings: Settings) -> int:
    """Run the app until a signal or a failed engine start; 0 after a clean drain, 1 otherwise."""
    readiness = app[READINESS]
    runner = ServiceRunner(app, **runner_options(settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc)
        await runner.cleanup()
        return 1
    logger.info("listening on http://%s:%s (/healthz answers now; /readyz once the model is loaded and warmed up)", settings.host, settings.port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, readiness.stop.set)
    await readiness.stop.wait()
    failed = readiness.state == "failed"
    logger.info("stopping (%s); draining in-flight requests", readiness.state if failed else "signal")
    drained = await drain(app)
    if not drained:
        logger.warning("work still unfinished after %.1f s; it was answered 503", settings.shutdown_timeout)
    await runner.cleanup()
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until stopped. Exit status: 0 after a clean drain, 2 when refused before serving (settings,
    engine), 1 for any other failed start."""
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        api_keys = None if settings.api_keys_file is None else ApiKeys.read(settings.api_keys_file)
    except ValueError as exc:
        print(f"error: --api-keys-file {settings.api_keys_file}: {exc}", file=sys.stderr)
        return 2
    try:
        with queued_logging(settings.log_level, settings.log_format) as log_format:
            code, engine_busy = run(settings, api_keys, log_format)
    except EngineUnavailable as exc:
        # Printed once the log listener has written what was queued: the line stays a line of its own.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if engine_busy:
        # A model call outlived --shutdown-timeout and the grace after it. Its thread cannot be
        # interrupted, and the interpreter's own exit would tear down the native libraries under it
        # (SIGABRT): end the process here, the answers already sent and the logs written.
        os._exit(code)
    return code


def run(settings: Settings, api_keys: ApiKeys | None, log_format: str) -> tuple[int, bool]:
    """Select the engine and serve; (exit status, whether an engine call is still running)."""
    logger.info("starting: model %s%s, engine %s, logs as %s", settings.model,
                f" at revision {settings.revision}" if settings.revision else "", settings.engine, log_format)
    # Imported only now: the engine factory pulls in torch (seconds), and a bad flag is refused before that.
    started = time.perf_counter()
    from engines.select import prepare_and_select

    route_library_logs()
    logger.info("imported torch and diffusers, %.1f s", time.perf_counter() - started)
    # Before listening: a missing or unreachable model raises EngineUnavailable here (main: one line, exit 2).
    engine = prepare_and_select(settings.engine_request())
    cache = ImageCache(settings.cache_dir, settings.cache_size)  # never raises: a broken cache is bypassed
    app = create_app(settings, engine, cache, api_keys)
    code = asyncio.run(serve(app, settings))
    if not app[ADMISSION].engine_idle:
        logger.warning("an engine call is still running; exiting without waiting for it")
        return code, True
    return code, False


if __name__ == "__main__":
    sys.exit(main())
