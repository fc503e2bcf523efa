"""What the data plane needs of a proxy engine's supervisor (Caddy or HAProxy)."""

from __future__ import annotations

from typing import Protocol

from app.dataplane.routes import RoutingTable


class ProxySupervisor(Protocol):
    """Starts (or adopts) a proxy, programs it with routing tables, watches and stops it."""

    adopted: bool
    """``start`` found the proxy a previous server of this serve port left running."""
    restarts: int
    """How many times the watch loop started the proxy again."""

    async def start(self, table: RoutingTable) -> None:
        """Adopt the proxy of this run directory or start one, routing by ``table``."""
        ...

    async def apply(self, table: RoutingTable) -> bool:
        """Route by ``table`` from now on; True when it differs from the last one."""
        ...

    async def served(self, within: float = 10.0) -> bool:
        """Wait until the proxy has the last table; False if not within ``within`` seconds."""
        ...

    async def converged(self, within: float = 10.0) -> bool:
        """``served``, and no request is routed by an older table any more."""
        ...

    async def upstreams(self) -> dict[str, int]:
        """Requests in flight per upstream address (``127.0.0.1:41234``)."""
        ...

    async def stop(self) -> None:
        """Stop watching and stop the proxy gracefully."""
        ...
