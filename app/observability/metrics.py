"""Prometheus metrics, with the official ``prometheus-client``.

One ``Metrics`` per application (its own ``CollectorRegistry``, so several apps in one process,
as in the tests, never share counters). HTTP requests are counted by route *template* (never by
raw path: ids would explode the series), method and status by a pure ASGI middleware
(``app.middleware``); GraphQL operations by name through a Strawberry extension
(``app.gql.metrics``). Gauges of the log hub and the reconciler are read from their own counters
at scrape time, so those hot paths carry no metrics code. With ``PROMETHEUS_MULTIPROC_DIR`` set
(several worker processes) the exposition aggregates every worker's files, as the client library
documents.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import Scope

from app.domain.phases import FAILED, SERVING, PhaseEntry

DEPLOY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HubCounters(Protocol):
    """What the log hub exposes (``app.streams.LogHub``)."""

    @property
    def local_subscribers(self) -> int: ...
    @property
    def pumps(self) -> int: ...


class Metrics:
    """The server's metrics; ``render()`` is the ``/metrics`` body."""

    def __init__(self) -> None:
        # ``*_created`` series double the output and serve no panel
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "dockyard_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "dockyard_http_request_duration_seconds",
            "Time to the end of the response, by route template and method (streams excluded).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.open_streams = Gauge(
            "dockyard_open_connections",
            "Long-lived client connections open now: sse or websocket.",
            ["kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.graphql_operations = Counter(
            "dockyard_graphql_operations",
            "GraphQL operations executed, by operation name, type and outcome (ok or error).",
            ["operation", "type", "outcome"],
            registry=r,
        )
        self.graphql_latency = Histogram(
            "dockyard_graphql_operation_duration_seconds",
            "GraphQL operation execution time by operation name and type (queries, mutations).",
            ["operation", "type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deploy_phase = Histogram(
            "dockyard_deploy_phase_seconds",
            "Time revisions spent in each deploy phase (until the next began), by runtime.",
            ["phase", "runtime"],
            buckets=DEPLOY_BUCKETS,
            registry=r,
        )
        self.deploy_total = Histogram(
            "dockyard_deploy_seconds",
            "Accepted -> serving time of revisions, by runtime.",
            ["runtime"],
            buckets=DEPLOY_BUCKETS,
            registry=r,
        )
        self.deploy_failures = Counter(
            "dockyard_deploy_failures",
            "Revisions that failed, by the phase they failed in, reason and runtime.",
            ["phase", "reason", "runtime"],
            registry=r,
        )
        self._sources: list[Callable[[], Iterable[Metric]]] = []
        r.register(_Sources(self._sources))

    def deploy_finished(self, runtime: str, timeline: list[PhaseEntry]) -> None:
        """A revision first served or first failed: its phases into the deploy histograms."""
        for entry in timeline:
            if entry.duration_ms is not None:
                self.deploy_phase.labels(entry.phase, runtime).observe(entry.duration_ms / 1000)
        last = timeline[-1] if timeline else None
        if last is None:
            return
        if last.phase == SERVING:
            self.deploy_total.labels(runtime).observe((last.at_ns - timeline[0].at_ns) / 1e9)
        elif last.phase == FAILED:
            phase, _, reason = last.reason.partition(": ")
            self.deploy_failures.labels(phase, reason.split(":")[0][:64], runtime).inc()

    def add_source(self, source: Callable[[], Iterable[Metric]]) -> None:
        """A function that yields gauge families read from live objects at scrape time."""
        self._sources.append(source)

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Sources(Collector):
    def __init__(self, sources: list[Callable[[], Iterable[Metric]]]) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Any]:
        for source in self._sources:
            yield from source()

    def describe(self) -> Iterable[Any]:
        return []  # read at scrape time; nothing to check at registration


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A monotonically growing count kept by another object, exposed as it stands."""
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def route_template(scope: Scope) -> str:
    """What requests are counted by: the matched route's path template, never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "unmatched"
