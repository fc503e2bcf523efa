"""Puts the metrics, the request id and ``/metrics`` on an application (``app.server``)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client.core import Metric

from app.middleware import RequestMiddleware
from app.observability.metrics import Metrics, counter, gauge
from app.settings import Settings

if TYPE_CHECKING:
    from app.reconcile import Reconciler
    from app.streams import LogHub


def hub_metrics(hub: LogHub) -> Iterable[Metric]:
    up = hub.upstream
    yield gauge("dockyard_log_upstream_streams_open", "Engine log streams open now.", up.open)
    yield counter("dockyard_log_upstream_streams_opened", "Engine log streams opened.", up.opened)
    yield gauge("dockyard_log_pumps", "Log pumps this process runs now.", hub.pumps)
    yield gauge(
        "dockyard_log_subscribers",
        "Log followers connected to this process.",
        hub.local_subscribers,
    )
    yield counter("dockyard_log_lines_in", "Log lines read from the runtime.", up.lines)
    yield counter("dockyard_log_lines_out", "Log lines handed to followers.", up.delivered)
    yield counter(
        "dockyard_log_lines_dropped",
        "Log lines dropped for followers reading too slowly.",
        up.dropped,
    )


def reconciler_metrics(reconciler: Reconciler) -> Iterable[Metric]:
    stats = reconciler.stats
    yield gauge(
        "dockyard_reconciler_queue_depth", "Containers waiting for a pass.", reconciler.queue_depth
    )
    yield counter("dockyard_reconciler_passes", "Reconcile passes that completed.", stats.passes)
    yield counter("dockyard_reconciler_errors", "Reconcile passes that failed.", stats.errors)
    yield gauge(
        "dockyard_reconciler_leader",
        "1 when this replica leads reconciliation, else 0.",
        1 if reconciler.leading else 0,
    )
    if stats.last_resync is not None:
        yield gauge(
            "dockyard_reconciler_seconds_since_resync",
            "Seconds since the last full resync.",
            time.monotonic() - stats.last_resync,
        )


def install(
    app: FastAPI,
    *,
    settings: Settings,
    metrics: Metrics,
    hub: LogHub | None,
    reconciler: Reconciler | None,
) -> None:
    """The API's request layer (request id, metrics, body limit: ``app.middleware``) and the
    ``/metrics`` route."""
    if hub is not None:
        metrics.add_source(lambda: hub_metrics(hub))
    if reconciler is not None:
        metrics.add_source(lambda: reconciler_metrics(reconciler))
    # Outermost: every log line and problem body of the request has its id.
    app.add_middleware(
        RequestMiddleware, metrics=metrics, body_limit=settings.max_request_body_bytes
    )
    if settings.metrics == "off":
        return
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        if settings.metrics == "token":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return Response(
                    "metrics need the bearer token set in DOCKYARD_METRICS_TOKEN\n",
                    status_code=401,
                    media_type="text/plain",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)
