"""Prometheus metrics: one registry per app (no module-level state), fed by a middleware,
the admission queue and the image images."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.admission import AdmissionObserver
from service.auth import current_key_id
from service.cache import ImageCache
from service.tiers import Tiers

# nginx's code for "client closed the request": the status label of a request whose client left.
CLIENT_CLOSED = 499
# Every counter is present from the start, at 0, with these labels: a dashboard's rate() needs a series.
REFUSAL_REASONS = ("queue_full", "key_share", "deadline", "draining")
CACHE_RESULTS = ("hit", "miss", "shared", "remote")


def service_version() -> str:
    """This package's installed version, for the info metric."""
    try:
        return version("sdxl-turbo-service")
    except PackageNotFoundError:
        return "unknown"


# `*_created` series double every family and no dashboard reads them.
disable_created_metrics()


def outcome(status: int, cache_status: str | None) -> str:
    """What became of a request, for latency by outcome: hit, miss, shared, refused, invalid, disconnected, error, ok."""
    if status == CLIENT_CLOSED:
        return "disconnected"
    if status >= 500 and status not in (503, 504):
        return "error"
    if status in (429, 503, 504):
        return "refused"
    if status >= 400:
        return "invalid"
    return cache_status.lower() if cache_status else "ok"
# Seconds: from a cache hit (sub-millisecond) to a full-size image on a CPU (tens of seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)


class ServiceMetrics(AdmissionObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # CPU seconds, resident memory, open files of this process
        PlatformCollector(registry=r)
        self.info = Gauge("sdxl_engine_info", "The engine serving, its model fingerprint and the service version (value 1)",
                          ["engine", "model", "version"], registry=r)
        self.ready = Gauge("sdxl_ready", "1 while /readyz answers 200, else 0", registry=r)
        self.latency = Histogram("sdxl_request_seconds", "Request latency by route and outcome", ["route", "outcome"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("sdxl_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        # Only with API keys: the short key id (never the key), so one client's traffic can be told apart.
        self.requests_by_key = Counter("sdxl_key_requests", "HTTP requests by API key id and status", ["key", "status"], registry=r)
        self.cache = Counter("sdxl_cache_lookups", "Image cache lookups by result", ["result"], registry=r)
        self.queue_depth = Gauge("sdxl_queue_depth", "Requests waiting for the model", registry=r)
        self.refusals = Counter("sdxl_refused_requests", "Requests refused or dropped by the admission queue", ["reason"], registry=r)
        self.batch_size = Histogram("sdxl_batch_size", "Requests per engine call", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.self_test = Gauge(
            "sdxl_self_test_passed", "1: the warm-up image passed the self-test; 0: it failed (see /readyz); -1: not run yet", registry=r
        )
        self.self_test.set(-1)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        self._cache_children = {result.upper(): self.cache.labels(result) for result in CACHE_RESULTS}
        self._request_series: dict[tuple[str, int, str | None], tuple[Any, Any, Any]] = {}
        self.stage_seconds = Histogram(
            "sdxl_stage_seconds",
            "Latency per stage: queue_wait, text_encoders, unet, vae, image_encoding, request",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    # --- AdmissionObserver --------------------------------------------------------------------------

    def queued(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def batch_done(self, size: int, queue_waits: list[float], stage_seconds: dict[str, float]) -> None:
        self.batch_size.observe(size)
        for wait in queue_waits:
            self.stage_seconds.labels("queue_wait").observe(wait)
        for stage, seconds in stage_seconds.items():
            self.stage_seconds.labels(stage).observe(seconds)

    # --- the rest ------------------------------------------------------------------------------------

    def engine_ready(self, engine: str, model: str) -> None:
        self.info.labels(engine, model, service_version()).set(1)

    def cache_result(self, result: str) -> None:
        self._cache_children[result].inc()

    def request_done(self, request: web.BaseRequest, status: int, cache_status: str | None, seconds: float) -> None:
        """Count a request by route (the route's pattern, not the raw path) and final status, and
        its latency by outcome. The labelled series are looked up once per combination and kept:
        prometheus_client's labels() costs a lock and a few tuples, on every request."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        series = self._request_series.get((route, status, cache_status))
        if series is None:
            series = self._request_series[(route, status, cache_status)] = (
                self.requests.labels(route, str(status)),
                self.latency.labels(route, outcome(status, cache_status)),
                self.stage_seconds.labels("request") if route == "/generate-image" else None,
            )
        count, latency, stage = series
        count.inc()
        latency.observe(seconds)
        if stage is not None:
            stage.observe(seconds)
        key_id = current_key_id.get()
        if key_id is not None:
            self.requests_by_key.labels(key_id, str(status)).inc()

    def stage(self, name: str, seconds: float) -> None:
        self.stage_seconds.labels(name).observe(seconds)

    def watch_cache(self, cache: ImageCache) -> None:
        """Export the cache's own fault counts, read at scrape time (the cache exists before the app)."""
        self.registry.register(_CacheCollector(cache))

    def watch_tiers(self, tiers: Tiers) -> None:
        """Export each cache tier's errors and whether it works now, read at scrape time."""
        self.registry.register(_TierCollector(tiers))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


class _CacheCollector(Collector):
    def __init__(self, cache: ImageCache) -> None:
        self.cache = cache

    def collect(self):  # type: ignore[no-untyped-def]
        enabled = GaugeMetricFamily("sdxl_cache_enabled", "1 if the image cache is in use, 0 if bypassed")
        enabled.add_metric([], 1 if self.cache.enabled else 0)
        faults = CounterMetricFamily(
            "sdxl_cache_faults",
            "Image cache faults: refused_not_raw_bytes, corrupt_entry, read_error, write_error, set_aside, bypassed, orphans_removed",
            labels=["kind"],
        )
        for kind, count in sorted(self.cache.faults.snapshot().items()):
            faults.add_metric([kind], count)
        return [enabled, faults]


class _TierCollector(Collector):
    def __init__(self, tiers: Tiers) -> None:
        self.tiers = tiers

    def collect(self):  # type: ignore[no-untyped-def]
        errors = CounterMetricFamily("sdxl_cache_tier_errors", "Failed reads and writes by cache tier", labels=["tier"])
        up = GaugeMetricFamily("sdxl_cache_tier_up", "1 if the cache tier works now, 0 if it is failing", labels=["tier"])
        disk = self.tiers.disk
        faults = disk.faults.snapshot()
        errors.add_metric(["disk"], faults.get("read_error", 0) + faults.get("write_error", 0))
        up.add_metric(["disk"], 1 if disk.enabled and disk.working else 0)
        refills = CounterMetricFamily(
            "sdxl_cache_refills", "Disk-tier refills after a Redis hit, done in the background: written, failed, dropped (too many pending)",
            labels=["result"],
        )
        for result, count in self.tiers.refills.counts.items():
            refills.add_metric([result], count)
        if self.tiers.shared is not None:
            health = self.tiers.shared.health
            errors.add_metric(["redis"], health.errors)
            up.add_metric(["redis"], 1 if health.up else 0)
        return [errors, up, refills]
