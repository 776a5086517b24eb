"""Prometheus metrics. Multiprocess mode (one file per Gunicorn worker, summed at scrape time)
is chosen by prometheus-client itself when ``PROMETHEUS_MULTIPROC_DIR`` is set before this
module is first imported; ``service.gunicorn_conf`` sets it in the master before forking."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

HTTP_REQUESTS = Counter(
    "plinth_http_requests_total",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "plinth_http_request_duration_seconds",
    "HTTP request latency by method, route template and status",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PREDICTION_LATENCY = Histogram(
    "plinth_prediction_duration_seconds",
    "Queue wait plus inference of one request's inputs, by model",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_POOL_IN_USE = Gauge(
    "plinth_db_pool_connections_in_use",
    "Database connections checked out of the pool (summed over live workers)",
    multiprocess_mode="livesum",
)


def change_pool_in_use(delta: int) -> None:
    DB_POOL_IN_USE.inc(delta)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text, aggregated over all workers when running multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
