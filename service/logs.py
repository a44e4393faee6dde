"""Logs: text for a person at a terminal, one JSON object a line for a collector, each line with
the id of the request being served.

Records are formatted and written by a listener thread (`queued_logging`): the event loop only
makes the record and puts it on a queue, so an access line per request costs no JSON and no write
on the loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from typing import Iterator

from aiohttp.abc import AbstractAccessLogger
from aiohttp import web

from service.auth import current_key_id
from service.errors import REQUEST_ID_KEY

# Probes and scrapes arrive every few seconds: logged at DEBUG, so INFO shows real traffic.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Third-party progress bars (downloads, checkpoint shards) would break JSON lines: these variables
# turn them off in huggingface_hub, transformers and diffusers, which read them at import.
PROGRESS_BAR_VARIABLES = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_DISABLE_PROGRESS_BAR": "1", "TQDM_DISABLE": "1"}

# Set by the request-id middleware; read by the formatter for every record logged while serving.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id.get()
        if request_id:
            entry["request_id"] = request_id
        key_id = getattr(record, "key_id", None) or current_key_id.get()
        if key_id:
            entry["key_id"] = key_id
        for name in ("method", "path", "status", "duration_ms"):
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class AccessLogger(AbstractAccessLogger):
    """One line per request, with its id, status and duration (--access-log all)."""

    min_status = 0

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        status = response.status
        if status < self.min_status:
            return
        path = request.path
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        method = request.method
        # Arguments, not a formatted string: the listener thread formats the line.
        extra = {"request_id": request.get(REQUEST_ID_KEY), "method": method, "path": path, "status": status, "duration_ms": round(time * 1000, 2)}
        self.logger.log(level, "%s %s %s", method, path, status, extra=extra)


class ErrorAccessLogger(AccessLogger):
    """--access-log errors: only the requests answered 400 or above."""

    min_status = 400


def access_log_options(mode: str) -> dict[str, object]:
    """aiohttp's runner options for --access-log: `off` turns its access logging off altogether."""
    if mode == "off":
        return {"access_log": None}
    return {"access_log_class": ErrorAccessLogger if mode == "errors" else AccessLogger}


class _ContextQueueHandler(logging.handlers.QueueHandler):
    """Hands the record to the listener as it is: no formatting on the caller's thread (the base
    class formats in `prepare`, for queues that pickle). The request and key ids live in context
    variables of the caller, so they are copied onto the record here."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id.get()
        record.key_id = current_key_id.get()
        return record


def resolve_log_format(log_format: str) -> str:
    """auto: text when a person reads standard error (a terminal), else JSON (a file, a collector)."""
    if log_format != "auto":
        return log_format
    return "text" if sys.stderr.isatty() else "json"


def route_library_logs() -> None:
    """transformers and diffusers log through handlers of their own ("[transformers] ..." lines, never
    JSON: a prompt past CLIP's 77 tokens makes the tokenizer warn): drop those, so their records reach ours."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (transformers_logging, diffusers_logging):
        library.disable_default_handler()
        library.enable_propagation()


@contextlib.contextmanager
def queued_logging(level: str, log_format: str) -> Iterator[str]:
    """Every log record to standard error in `log_format`, written by a listener thread that this
    context starts and, on exit, stops after writing what is queued; yields the format chosen (for auto)."""
    chosen = resolve_log_format(log_format)
    handler = _stderr_handler(chosen)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    logging.basicConfig(level=level, handlers=[_ContextQueueHandler(records)], force=True)
    # Neither format prints the caller, thread or process: skip collecting them for every record
    # (the logging HOWTO's "Optimization"; an access line is written for every request).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    listener.start()
    try:
        yield chosen
    finally:
        listener.stop()
        # What is logged after (interpreter exit) is written directly: no listener is left to read the queue.
        logging.basicConfig(level=level, handlers=[handler], force=True)


def _stderr_handler(chosen: str) -> logging.Handler:
    handler = logging.StreamHandler()
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
        for name, value in PROGRESS_BAR_VARIABLES.items():
            os.environ.setdefault(name, value)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    return handler
