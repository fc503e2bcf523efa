"""A small client of Caddy's admin API over its unix socket (aiohttp, already a dependency)."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import aiohttp

from app.dataplane.dnsd import target_ip

# The admin API wants a Host header; over a unix socket any name will do.
BASE_URL = "http://caddy-admin"


class CaddyAdminError(Exception):
    """The admin endpoint refused a request or could not be reached."""


def socket_path(admin: str) -> str:
    """The filesystem path of a ``unix//abs/path.sock`` admin address."""
    if not admin.startswith("unix/"):
        raise ValueError(f"admin address must be unix//<path>, got {admin!r}")
    return admin.removeprefix("unix/")


def upstream_address(dial: str) -> str:
    """``tcp4/ip-127-0-0-1.dy.:41234`` -> ``127.0.0.1:41234``; any other dial address
    unchanged."""
    host, sep, port = dial.removeprefix("tcp4/").rpartition(":")
    resolved = target_ip(host) if sep else None
    return f"{resolved}:{port}" if resolved is not None else dial


class CaddyAdmin:
    """``load(config)`` replaces the whole configuration atomically; ``upstreams()`` reads the
    in-flight requests per upstream address."""

    def __init__(self, admin: str, *, timeout: float = 10.0) -> None:
        self.admin = admin
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=socket_path(self.admin)),
                timeout=self._timeout,
            )
        return self._session

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._client().request(
                method, BASE_URL + path, data=data, headers=headers
            ) as response:
                text = await response.text()
                if response.status >= 300:
                    raise CaddyAdminError(f"{method} {path}: {response.status} {text[:500]}")
                return json.loads(text) if text.strip() else None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise CaddyAdminError(f"{method} {path}: {e!r}") from e

    async def ping(self) -> bool:
        """Whether a Caddy answers on the admin socket."""
        try:
            await self._request("GET", "/config/admin")
        except CaddyAdminError:
            return False
        return True

    async def load(self, config: dict[str, Any]) -> None:
        """Replace the running configuration; requests in flight finish on the old one."""
        await self._request("POST", "/load", config)

    async def config(self) -> Any:
        return await self._request("GET", "/config/")

    async def upstreams(self) -> dict[str, int]:
        """In-flight requests per upstream dial address (``127.0.0.1:41234``; an SRV target
        name such as ``ip-127-0-0-1.dy.:41234`` is given back as the address it stands for)."""
        found = await self._request("GET", "/reverse_proxy/upstreams")
        counts: dict[str, int] = {}
        for entry in found or []:
            address = upstream_address(str(entry["address"]))
            # Caddy 2.11 lists a dynamic upstream twice (its host and its in-flight tracker),
            # with the same count: keep one.
            counts[address] = max(counts.get(address, 0), int(entry.get("num_requests", 0)))
        return counts

    async def stop(self) -> None:
        """Ask Caddy to exit gracefully."""
        await self._request("POST", "/stop")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> CaddyAdmin:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
