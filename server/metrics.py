"""Metrics: counters and histograms kept per process and rendered in the Prometheus text format.

Written here rather than with prometheus_client: the service needs three counters and three
histograms with fixed labels, recorded only on the event-loop thread (so no locks on the hot path),
and one registry per app instance (tests start several apps in one process; prometheus_client's
default registry is process-global). Measured in one process: prometheus_client's
`labels(...).inc()` ~3.3 us and a histogram's `labels(...).observe()` ~4.4 us, against ~0.3 and
~0.5 us here (its per-child lock and label lookup), paid on every request. The engine's figures
(data quality, drift, stage times: engine/monitor/) are not counted here at all: they are read
from the engine at scrape time through `source`, so the request path pays nothing for them here.
With `--workers N` every worker keeps its own figures and labels them with its `pid`; Prometheus
sums them across scrapes of the shared port.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

__all__ = ["Metrics", "MetricsMiddleware", "LATENCY_BUCKETS", "BATCH_BUCKETS"]

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384, 65536)


class _Counter:
    kind = "counter"  # a family read from a source may be a gauge: same lines, other type

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple, float] = {}

    def inc(self, key: tuple, amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self, extra: str) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{{{_labels(self.labels, key, extra)}}} {_num(value)}"


class _Histogram:
    def __init__(self, name: str, help: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.labels, self.buckets = name, help, labels, buckets
        self.values: dict[tuple, list] = {}  # key -> [bucket counts..., +Inf count, sum]

    def observe(self, key: tuple, value: float) -> None:
        slots = self.values.get(key)
        if slots is None:
            slots = self.values[key] = [0] * (len(self.buckets) + 1) + [0.0]
        slots[bisect_left(self.buckets, value)] += 1
        slots[-1] += value

    def render(self, extra: str) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for key, slots in sorted(self.values.items()):
            base = _labels(self.labels, key, extra)
            running = 0
            for bound, count in zip(self.buckets, slots):
                running += count
                yield f'{self.name}_bucket{{{base},le="{_num(bound)}"}} {running}'
            running += slots[len(self.buckets)]
            yield f'{self.name}_bucket{{{base},le="+Inf"}} {running}'
            yield f"{self.name}_sum{{{base}}} {_num(slots[-1])}"
            yield f"{self.name}_count{{{base}}} {running}"


class Metrics:
    """The service's figures: HTTP requests by route and status, scoring by model and version."""

    def __init__(self) -> None:
        self.http_requests = _Counter(
            "scoreline_http_requests_total", "HTTP requests answered, by route, method and status.",
            ("route", "method", "status"))
        self.http_latency = _Histogram(
            "scoreline_http_request_duration_seconds", "Time from request start to the response's last byte.",
            ("route",), LATENCY_BUCKETS)
        self.errors = _Counter(
            "scoreline_errors_total", "Error answers by error kind (schema, not-found, overloaded, ...).",
            ("kind",))
        self.rows = _Counter(
            "scoreline_scored_rows_total", "Rows scored, by model, version and outcome (ok or error).",
            ("model", "version", "outcome"))
        self.score_latency = _Histogram(
            "scoreline_score_latency_seconds",
            "Time a scoring request spends waiting for and inside the engine, by model and version.",
            ("model", "version"), LATENCY_BUCKETS)
        self.batch_rows = _Histogram(
            "scoreline_batch_rows", "Rows per engine call (micro-batch size), by model and version.",
            ("model", "version"), BATCH_BUCKETS)
        self._gauges: list[tuple[str, str, Callable[[], Iterable[tuple[tuple, float]]], tuple[str, ...]]] = []
        self._sources: list[Callable[[], Iterable[tuple]]] = []
        self._extra = f'pid="{os.getpid()}"'

    def gauge(self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], Iterable[tuple[tuple, float]]]) -> None:
        """A gauge read at scrape time: `read()` yields (label values, value) pairs."""
        self._gauges.append((name, help, read, labels))

    def source(self, read: Callable[[], Iterable[tuple]]) -> None:
        """Metric families read at scrape time: `read()` yields (name, type, help, label names,
        samples, buckets) as engine/monitor/figures.py makes them."""
        self._sources.append(read)

    def render(self) -> str:
        """The Prometheus text exposition (version 0.0.4) of every figure."""
        lines: list[str] = []
        for metric in (self.http_requests, self.http_latency, self.errors, self.rows, self.score_latency, self.batch_rows):
            lines.extend(metric.render(self._extra))
        for name, help, read, labels in self._gauges:
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} gauge")
            for key, value in read():
                lines.append(f"{name}{{{_labels(labels, key, self._extra)}}} {_num(value)}")
        for read in self._sources:
            for name, kind, help, labels, samples, buckets in read():
                if kind == "histogram":
                    metric = _Histogram(name, help, labels, buckets)
                    metric.values = dict(samples)
                else:
                    metric = _Counter(name, help, labels)
                    metric.values = dict(samples)
                    metric.kind = kind
                lines.extend(metric.render(self._extra))
        return "\n".join(lines) + "\n"


def _labels(names: tuple[str, ...], values: tuple, extra: str) -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    parts.append(extra)
    return ",".join(parts)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class MetricsMiddleware:
    """Pure ASGI middleware counting every HTTP answer by route template, method and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = 500  # what the client sees if the app fails before answering

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http_requests.inc((template, scope["method"], str(status)))
            self.metrics.http_latency.observe((template,), time.monotonic() - start)
