"""The routing table of the data plane: which host reaches which instance addresses, by weight.

Pure and deterministic: every API replica derives the same table from the same database rows, so
a replica that is not the leader routes exactly like the leader (no route lives only in memory).
The table is rendered to the proxy's configuration by ``app.dataplane.caddy``.

- ``<slug>.<domain>`` carries the container's traffic split; each target's percent is divided
  evenly over the ready endpoints of its revision (integer weights, scaled by the least common
  multiple of the endpoint counts so the split stays exact).
- ``<tag>---<slug>.<domain>`` reaches only the tagged revision (100 %), even when it carries 0 %.
- A target revision without a ready endpoint is routed to the activator when one is given (it
  holds the request and wakes the revision), otherwise it contributes nothing; a host left with no
  backend answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.domain.traffic import LATEST_100, TrafficEntry, resolve_traffic, tag_host


@dataclass(frozen=True)
class Backend:
    address: str
    """``127.0.0.1:41234`` or ``unix//abs/path.sock`` (Caddy's dial syntax)."""
    weight: int
    """> 0"""
    revision: int


@dataclass(frozen=True)
class HostRoute:
    host: str
    """Lowercase, no port: ``<slug>.<domain>`` or ``<tag>---<slug>.<domain>``."""
    container_id: str
    backends: tuple[Backend, ...]
    """Empty: the proxy answers 503 with ``Retry-After`` (without it when ``failed``)."""
    failed: bool = False
    """The container failed: waiting will not help, so no ``Retry-After``."""


RoutingTable = tuple[HostRoute, ...]
"""Sorted by host, so equal tables compare equal."""

ActivatorAddress = Callable[[str, int], str]
"""(container_id, revision) -> ``unix//…sock`` where the activator holds requests for it."""


@dataclass(frozen=True)
class RoutedRevision:
    """What the data plane needs of one revision: its ready instances (``revisions`` row)."""

    revision: int
    instances_ready: int = 0
    endpoints: tuple[str, ...] = ()
    """``host:port`` (or ``unix//…``) of every ready instance."""


@dataclass(frozen=True)
class RoutedContainer:
    """What the data plane needs of one live container."""

    id: str
    slug: str
    ready_revision: int | None
    """The newest ready revision: what ``latest`` targets mean."""
    revisions: tuple[RoutedRevision, ...] = ()
    traffic: tuple[TrafficEntry, ...] = (LATEST_100,)
    """The container's desired traffic (``traffic_of(Container.traffic)``); by default 100 % to
    the newest ready revision."""
    failed: bool = False
    """Its status is ``failed``: a host without backends says so instead of "retry shortly"."""

    def endpoints(self, revision: int) -> tuple[str, ...]:
        for routed in self.revisions:
            if routed.revision == revision:
                return routed.endpoints if routed.instances_ready > 0 else ()
        return ()


def host_domain(domain: str) -> str:
    """The ingress domain as hosts carry it: lowercase, without a port (``localhost:8000``)."""
    domain = domain.strip().lower().rstrip(".")
    if domain.startswith("["):
        return domain
    return domain.rsplit(":", 1)[0] if ":" in domain else domain


def _backends(
    container: RoutedContainer,
    shares: Sequence[tuple[int, int]],
    activator: ActivatorAddress | None,
) -> tuple[Backend, ...]:
    """Backends for ``(revision, percent)`` shares; equal addresses are merged."""
    resolved: list[tuple[int, int, tuple[str, ...]]] = []
    for revision, percent in shares:
        if percent <= 0:
            continue
        addresses = container.endpoints(revision)
        if not addresses and activator is not None:
            addresses = (activator(container.id, revision),)
        if addresses:
            resolved.append((revision, percent, tuple(sorted(set(addresses)))))
    if not resolved:
        return ()
    scale = math.lcm(*(len(addresses) for _, _, addresses in resolved))
    weights: dict[tuple[str, int], int] = {}
    for revision, percent, addresses in resolved:
        for address in addresses:
            key = (address, revision)
            weights[key] = weights.get(key, 0) + percent * scale // len(addresses)
    divisor = math.gcd(*weights.values())
    return tuple(
        Backend(address=address, weight=weight // divisor, revision=revision)
        for (address, revision), weight in sorted(weights.items(), key=lambda kv: kv[0])
    )


def build_routing_table(
    containers: Sequence[RoutedContainer], *, domain: str, activator: ActivatorAddress | None
) -> RoutingTable:
    """The hosts of every container in ``containers`` and where their requests go."""
    suffix = host_domain(domain)
    routes: dict[str, HostRoute] = {}
    for container in containers:
        slug = container.slug.lower()
        resolved = resolve_traffic(container.traffic, latest_ready=container.ready_revision)
        shares = [(t.revision, t.percent) for t in resolved if t.revision is not None]
        host = f"{slug}.{suffix}"
        routes[host] = HostRoute(
            host, container.id, _backends(container, shares, activator), container.failed
        )
        for target in resolved:
            if not target.tag:
                continue
            tagged = tag_host(target.tag.lower(), slug, suffix)
            backends = (
                _backends(container, [(target.revision, 100)], activator)
                if target.revision is not None
                else ()
            )
            routes[tagged] = HostRoute(tagged, container.id, backends, container.failed)
    return tuple(routes[host] for host in sorted(routes))
