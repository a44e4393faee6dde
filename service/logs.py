"""Logs: text for a person at a terminal, one JSON object a line for a collector, each line with
the id of the request being served."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

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
        key_id = current_key_id.get()
        if key_id:
            entry["key_id"] = key_id
        for name in ("method", "path", "status", "duration_ms"):
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class AccessLogger(AbstractAccessLogger):
    """One line per request, with its id, status and duration."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        self.logger.log(
            level,
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "request_id": request.get(REQUEST_ID_KEY),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
            },
        )


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


def configure_logging(level: str, log_format: str) -> str:
    """Send every log record to standard error in `log_format`; returns the format chosen (for auto)."""
    chosen = resolve_log_format(log_format)
    handler = logging.StreamHandler()
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
        for name, value in PROGRESS_BAR_VARIABLES.items():
            os.environ.setdefault(name, value)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Neither format prints the caller, thread or process: skip collecting them for every record
    # (the logging HOWTO's "Optimization"; an access line is written for every request).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return chosen
