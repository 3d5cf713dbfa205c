"""`GET /metrics`: what rung serve has done, in Prometheus' text format (prometheus-client).

- `rung_serve_requests_total{endpoint, status}`: every HTTP answer, by route and status;
- `rung_serve_request_duration_seconds{endpoint}`: from the request's arrival to its last byte
  (a stream's last event);
- `rung_serve_time_to_first_token_seconds{model}`: a stream's first token, from its arrival;
- `rung_serve_prompt_tokens_total{model}`, `rung_serve_completion_tokens_total{model}`;
- `rung_serve_requests_in_flight{model}` (running or waiting) and `rung_serve_queue_depth{model}`
  (waiting for a busy compute model), read from the app's `Gate` when scraped;
- `rung_serve_http_requests_in_flight`: every HTTP request not yet answered.

Each app has its own registry, so several apps in one process (tests) count apart.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from rung.records import Delta, Usage
from rung_serve.limits import Gate

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OTHER = "other"  # the endpoint label of a path no route matched (so clients cannot grow the label set)


class Metrics:
    """The counters and histograms of one app."""

    def __init__(self, gate: Gate) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("rung_serve_requests", "HTTP requests answered, by route and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("rung_serve_request_duration_seconds", "seconds from a request's arrival to "
                                 "its last byte", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_token = Histogram("rung_serve_time_to_first_token_seconds", "seconds from a streamed "
                                     "request's arrival to its first token", ["model"], buckets=FIRST_TOKEN_BUCKETS,
                                     registry=self.registry)
        self.prompt_tokens = Counter("rung_serve_prompt_tokens", "prompt tokens of answered requests", ["model"],
                                     registry=self.registry)
        self.completion_tokens = Counter("rung_serve_completion_tokens", "tokens generated for answered requests",
                                         ["model"], registry=self.registry)
        self.registry.register(_GateCollector(gate))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def count_usage(self, model: str, usage: Usage | None) -> None:
        if usage is not None:
            self.prompt_tokens.labels(model).inc(usage.prompt_tokens)
            self.completion_tokens.labels(model).inc(usage.completion_tokens)

    async def observed(self, deltas: AsyncIterator[Delta], model: str, started: float) -> AsyncIterator[Delta]:
        """`deltas` as they come, timing the first token (from `started`, a `time.monotonic()`)
        and counting the usage the last one carries; closes `deltas`."""
        first = True
        try:
            async for delta in deltas:
                if first:
                    self.first_token.labels(model).observe(time.monotonic() - started)
                    first = False
                if delta.finish_reason is not None:
                    self.count_usage(model, delta.usage)
                yield delta
        finally:
            closer = getattr(deltas, "aclose", None)
            if closer is not None:
                await closer()


class _GateCollector:
    """The in-flight and queue gauges, read from the gate at scrape time."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def collect(self) -> Any:
        in_flight = GaugeMetricFamily("rung_serve_requests_in_flight", "requests running on or waiting for a "
                                      "model", labels=["model"])
        queued = GaugeMetricFamily("rung_serve_queue_depth", "requests waiting for a busy compute model",
                                   labels=["model"])
        for name, count in sorted(self.gate.admitted.items()):
            in_flight.add_metric([name], count)
            queued.add_metric([name], self.gate.waiting(name))
        http = GaugeMetricFamily("rung_serve_http_requests_in_flight", "HTTP requests not yet answered")
        http.add_metric([], self.gate.in_flight)
        return [in_flight, queued, http]


class RecordRequests:
    """ASGI middleware: each HTTP answer's route, status and duration (until its last byte)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # what the client gets if the app fails before it answers

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or OTHER
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
