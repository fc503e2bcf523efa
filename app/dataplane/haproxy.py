"""HAProxy's configuration and host map (pure): the second data plane engine.

Why HAProxy: on this 2-core machine Caddy's own CPU per proxied request is about as much as the
container's work (a plain Caddy reaches 0.27-0.81x of a container's req/s at 32 connections),
while Debian's HAProxy 2.6 costs a fraction of that (0.79-1.00x). HAProxy has what the data plane
needs natively: WebSocket tunnelling, streamed bodies both ways, keep-alive to upstreams
(``http-reuse``), retries of a refused connect on another server (``retries`` + ``option
redispatch``), smooth weighted round robin (exact splits), ``http-request return`` for the
404/503 answers, per-server in-flight counts (``show stat``), and a runtime API that changes maps
and servers without a reload.

How routes are programmed (``app.dataplane.haproxy_supervisor`` applies what this module plans):

- The frontend on the serve port looks the request's host (lowercase, without its port) up in a
  map file (``hosts.map``) when it is exactly one label under the domain. The map value says
  where the host goes: ``!503`` (nothing ready: 503 + ``Retry-After``), ``!failed`` (503
  without it), ``@127.0.0.1:41234`` (a single direct address, the activator of a revision at
  zero: ``set-dst`` + ``set-dst-port`` to the one ``direct`` backend whose server is
  ``0.0.0.0:0``, so the common case at scale, 100k containers mostly at zero, needs no backend
  each), or the name of a backend (``h<n>``) whose servers are the host's instances by weight.
  A host under the domain that the map lacks answers 404; every other host goes to the API.
- The map and the servers change at run time (``set map``/``add map``/``del map``, and
  ``set server … addr/weight/state`` on server slots the configuration carries), so a route
  change reloads nothing. New backends cannot be created at run time, so the configuration
  carries spare empty backends; only when they or a backend's slots run out (and on start and
  restart) is a new configuration rendered from the current table and loaded by a seamless
  reload (``expose-fd listeners``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from app.dataplane.routes import RoutingTable

RETRY_AFTER_SECONDS = "2"
UNAVAILABLE = "!503"
FAILED = "!failed"
DIRECT_PREFIX = "@"
UNKNOWN_BODY = "no container serves this host\n"
UNAVAILABLE_BODY = "%[var(txn.host)] has no ready revision yet; retry shortly\n"
FAILED_BODY = "container failed; see its statusReason, fix it and redeploy\n"
API_MISSING_BODY = "not found\n"
"""The bodies of Caddy's responders (``app.dataplane.caddy``), word for word."""
MAX_WEIGHT = 256
"""HAProxy's largest server weight."""
SPARE_BACKENDS = 32
"""Empty backends a configuration carries beyond the hosts that use one (at least this many,
or an eighth of those in use): a new host with instances takes one at run time."""


@dataclass(frozen=True)
class HAProxyOptions:
    """Where HAProxy listens and what it forwards to, apart from the routing table."""

    listen: str
    """Public ``host:port`` of the serve port (container URLs and the API)."""
    directory: str
    """The run directory: config, map, pid file and sockets."""
    domain: str
    """The ingress domain as hosts carry it (no port), e.g. ``localhost``."""
    api: str | None = None
    """The Dockyard API: ``unix//abs/path.sock`` or ``host:port``; None: other hosts get 404."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """CIDRs whose ``X-Forwarded-For`` is kept and appended to (a front proxy on this host)."""
    timeout_connect: str = "5s"
    timeout_request: str = "10s"
    """Request headers must be complete within this (Caddy's ``read_header_timeout``)."""
    timeout_keep_alive: str = "2m"
    timeout_stream: str = "1h"
    """Client/server inactivity while a request or response streams, and WebSocket tunnels."""
    hard_stop_after: str = "1h"
    """How long a replaced worker may keep serving its open connections after a reload."""
    retries: int = 3
    threads: int | None = None
    """HAProxy threads; None: one per CPU (its default)."""

    # Short names: HAProxy takes unix socket paths of at most 97 bytes, and ``run_dir`` keeps
    # the directory under 84.

    @property
    def stats_socket(self) -> str:
        return f"{self.directory}/ha-cli.sock"

    @property
    def master_socket(self) -> str:
        return f"{self.directory}/ha-mw.sock"

    @property
    def map_file(self) -> str:
        return f"{self.directory}/hosts.map"


@dataclass(frozen=True)
class Plan:
    """What HAProxy must hold for a routing table: the map, and the servers of each backend."""

    hosts: Mapping[str, str]
    """host -> map value (a backend name, ``@addr``, ``!503`` or ``!failed``)."""
    pools: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """host -> {address: weight} for hosts balanced over servers."""


def server_address(address: str) -> str:
    """A Dockyard dial address as an HAProxy server address (``unix//p`` -> ``unix@/p``)."""
    if address.startswith("unix/"):
        return "unix@" + address.removeprefix("unix/")
    return address


@dataclass(frozen=True)
class Slot:
    """A server line of a backend: ``address`` None is an empty slot (in maintenance)."""

    name: str
    address: str | None = None
    weight: int = 1


PLACEHOLDER = "127.0.0.1:1"
"""The address of an empty slot (never used: the slot is in maintenance)."""
MIN_SLOTS = 4
"""Server slots per backend at least: instances come and go at run time by changing a slot's
address (``set server … addr``), because servers added with ``add server`` keep no idle
connections in HAProxy 2.6 (every request would open a new upstream connection)."""


def slots_for(addresses: Sequence[str]) -> list[Slot]:
    """Slots for a backend's first instances, and room to add as many again (at least
    ``MIN_SLOTS``)."""
    count = max(MIN_SLOTS, 2 * len(addresses))
    return [Slot(f"s{n + 1}") for n in range(count)]


def ip_port(address: str) -> tuple[str, int] | None:
    """``127.0.0.1:41234`` -> (ip, port); None for anything ``set server … addr`` cannot take
    (a unix socket, a name)."""
    if not _ipv4_port(address):
        return None
    host, _, port = address.rpartition(":")
    return host, int(port)


def scaled_weights(weights: Mapping[str, int]) -> dict[str, int]:
    """Weights within HAProxy's 1..256, in the same proportions (rounded) when larger."""
    top = max(weights.values(), default=1)
    if top <= MAX_WEIGHT:
        return dict(weights)
    return {a: max(1, round(w * MAX_WEIGHT / top)) for a, w in weights.items()}


def plan(table: RoutingTable, *, direct: Callable[[str], bool] | None = None) -> Plan:
    """The map values and server pools for ``table``. A host whose only backend is an address
    ``direct`` accepts (the activator's) is routed by the map alone; a pooled host's value is
    its backend name, which the supervisor fills in (left empty here)."""
    hosts: dict[str, str] = {}
    pools: dict[str, dict[str, int]] = {}
    for route in table:
        if not route.backends:
            hosts[route.host] = FAILED if route.failed else UNAVAILABLE
            continue
        weights: dict[str, int] = {}
        for backend in route.backends:
            weights[backend.address] = weights.get(backend.address, 0) + backend.weight
        if len(weights) == 1:
            (address,) = weights
            if direct is not None and _ipv4_port(address) and direct(address):
                hosts[route.host] = DIRECT_PREFIX + address
                continue
        hosts[route.host] = ""
        pools[route.host] = scaled_weights(weights)
    return Plan(hosts=hosts, pools=pools)


def _ipv4_port(address: str) -> bool:
    return re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}:\d{1,5}", address) is not None


def map_text(hosts: Mapping[str, str]) -> str:
    return "".join(f"{host} {value}\n" for host, value in sorted(hosts.items()))


def _quote(text: str) -> str:
    """A double-quoted config word; a newline is written as ``\\n``, which HAProxy unescapes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _domain_regex(domain: str) -> str:
    # One label (no dot) under the domain, as Caddy's ``*.{domain}``.
    return "^[^.]+" + re.escape("." + domain).replace("\\-", "-") + "$"


def render(
    options: HAProxyOptions,
    backends: Mapping[str, Sequence[Slot]],
    *,
    version: str,
) -> str:
    """The whole configuration: ``backends`` maps each backend name (``h<n>``) to its server
    slots (all empty for a spare)."""
    text = _PLAIN_TEXT
    lines = [
        "global",
        "    master-worker",
        f"    stats socket {options.stats_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    hard-stop-after {options.hard_stop_after}",
        # Seen in ``show info``: the supervisor knows a reload took effect when it reads it.
        f"    description {version}",
    ]
    if options.threads is not None:
        lines.append(f"    nbthread {options.threads}")
    lines += [
        "",
        "defaults",
        "    mode http",
        f"    timeout connect {options.timeout_connect}",
        f"    timeout client {options.timeout_stream}",
        f"    timeout server {options.timeout_stream}",
        f"    timeout tunnel {options.timeout_stream}",
        f"    timeout http-request {options.timeout_request}",
        f"    timeout http-keep-alive {options.timeout_keep_alive}",
        "    timeout queue 5s",
        # A refused connect (an instance just retired) is tried again, on another server.
        f"    retries {options.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure",
        "    http-reuse always",
        "",
        "frontend dockyard",
        f"    bind {options.listen}",
        f"    acl trusted src {' '.join(options.trusted_proxies)}",
        "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        f"    acl container var(txn.host) -m reg {_domain_regex(options.domain)}",
        # X-Forwarded-*: a trusted peer's values are kept (its X-Forwarded-For appended to);
        # anyone else's are replaced.
        "    http-request set-var(txn.xff) req.fhdr(x-forwarded-for) if trusted",
        '    http-request set-header X-Forwarded-For "%[var(txn.xff)], %[src]"'
        " if { var(txn.xff) -m found }",
        "    http-request set-header X-Forwarded-For %[src] if !{ var(txn.xff) -m found }",
        "    http-request set-header X-Forwarded-Proto http"
        " if !trusted || !{ req.hdr(x-forwarded-proto) -m found }",
        "    http-request set-header X-Forwarded-Host %[req.hdr(host)]"
        " if !trusted || !{ req.hdr(x-forwarded-host) -m found }",
        f"    http-request set-var(txn.route) var(txn.host),map({options.map_file}) if container",
        "    acl routed var(txn.route) -m found",
        f"    http-request return status 404 content-type {text}"
        f" string {_quote(UNKNOWN_BODY)}"
        " if container !routed",
        f"    http-request return status 503 content-type {text}"
        f" hdr Retry-After {RETRY_AFTER_SECONDS}"
        f" lf-string {_quote(UNAVAILABLE_BODY)}"
        f" if container {{ var(txn.route) -m str {UNAVAILABLE} }}",
        f"    http-request return status 503 content-type {text}"
        f" string {_quote(FAILED_BODY)}"
        f" if container {{ var(txn.route) -m str {FAILED} }}",
        f"    acl direct var(txn.route) -m beg {DIRECT_PREFIX}",
        "    http-request set-dst var(txn.route),bytes(1),field(1,:) if container direct",
        "    http-request set-dst-port var(txn.route),field(2,:) if container direct",
        "    use_backend direct if container direct",
        "    use_backend %[var(txn.route)] if container routed",
        "    default_backend api",
        "",
        "backend direct",
        "    server direct 0.0.0.0:0",
        "",
        "backend api",
    ]
    if options.api is not None:
        lines.append(f"    server api {server_address(options.api)}")
    else:
        missing = _quote(API_MISSING_BODY)
        lines.append(f"    http-request return status 404 content-type {text} string {missing}")
    for name in sorted(backends, key=_backend_order):
        lines += ["", f"backend {name}", "    balance roundrobin"]
        for slot in backends[name]:
            if slot.address is None:
                # An empty slot: in maintenance until ``set server … addr`` gives it an instance.
                lines.append(f"    server {slot.name} {PLACEHOLDER} weight 1 disabled")
            else:
                address = server_address(slot.address)
                lines.append(f"    server {slot.name} {address} weight {slot.weight}")
    return "\n".join(lines) + "\n"


_PLAIN_TEXT = '"text/plain; charset=utf-8"'


def _backend_order(name: str) -> tuple[int, str]:
    digits = name.removeprefix("h")
    return (int(digits), name) if digits.isdigit() else (-1, name)


def backend_names(count: int, taken: Sequence[str] = ()) -> list[str]:
    """``count`` backend names ``h<n>`` not in ``taken``, lowest first."""
    used = set(taken)
    names: list[str] = []
    n = 1
    while len(names) < count:
        if f"h{n}" not in used:
            names.append(f"h{n}")
        n += 1
    return names


def spares_for(in_use: int) -> int:
    return max(SPARE_BACKENDS, in_use // 8)
