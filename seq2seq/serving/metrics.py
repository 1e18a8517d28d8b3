"""Prometheus metrics of one server (`GET /metrics`), in a registry of its own.

Requests are counted by route and status code (errors by code), timed by route, and each
batch the workers translate is counted by its lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    def __init__(self, routes: set[str]) -> None:
        """`routes`: the paths counted by name; any other path is counted as `other`."""
        self.routes = routes
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "seq2seq_requests",
            "HTTP requests answered, by route and status code",
            ["route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "seq2seq_request_seconds",
            "time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_lines = Histogram(
            "seq2seq_batch_lines",
            "lines translated together in one batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_lines = Gauge(
            "seq2seq_queue_lines", "lines waiting for a worker", registry=self.registry
        )

    def watch_queue(self, queued_lines: Callable[[], int]) -> None:
        self.queue_lines.set_function(queued_lines)

    def route(self, path: str) -> str:
        return path if path in self.routes else "other"

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request, whatever answered it (route, error handler, limit)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app fails before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = self.metrics.route(scope["path"])
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
