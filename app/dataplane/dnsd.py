"""The route resolver: a tiny DNS server that tells Caddy where each host's requests go.

Caddy's configuration is loaded once and never again while routes change: every Caddy config
load replaces its HTTP server, and a connection that arrives during the swap can be closed
unanswered. Instead, the container route asks for its upstreams per request through Caddy's
dynamic SRV upstreams (``{http.request.host}.dy.``, cached by Caddy for ``refresh``) and this
server answers from the routing table Dockyard writes to a file:

- ``<host>.dy. SRV`` -> one record per weight unit of each backend (``ip-127-0-0-1.dy.`` and its
  port), so Caddy's ``random`` selection splits traffic by weight. Dockyard lists a host without
  a backend with the loopback responder Caddy serves for it (503 + Retry-After, or 503 "failed");
  any other name gets the 404 responder;
- ``ip-a-b-c-d.dy. A`` -> ``a.b.c.d``: the SRV target as the dialer resolves it (Caddy's transport
  asks this server too: its resolver does not read ``/etc/hosts`` for every name);
- ``version.dy. TXT`` -> the version of the table it serves.

It runs as a process of its own (``python -m app.dataplane.dnsd``), in its own session like
Caddy, so it keeps answering with the last table while a killed ``dockyard serve`` restarts; the
next one adopts it. It listens on one port number over TCP and UDP: Caddy asks for SRV records
over TCP (an answer with many weight units does not fit a datagram, and Caddy's resolver dials
one network only) and for the targets' A records over UDP (once per new upstream connection:
no connection set-up, and the answer comes from a cache). The wire format is dnspython's (well
kept, pure Python), not ours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

ZONE = "dy."
"""The private suffix every name this server answers ends with."""
TTL = 1
VERSION_NAME = "version." + ZONE
"""``TXT`` here: the ``version`` of the table being served (so a writer can wait for it)."""
MAX_RECORDS = 400
"""Weight units per host answer; larger splits are scaled down (at most 0.25 % off each)."""
POLL_SECONDS = 0.02


def srv_name(host: str) -> str:
    """The SRV name Caddy asks for ``host`` (what ``{http.request.host}.dy.`` expands to)."""
    return f"{host.lower().rstrip('.')}.{ZONE}"


def target_name(ip: str) -> str:
    """``127.0.0.1`` -> ``ip-127-0-0-1.dy.`` (an SRV target must be a name, not an address)."""
    return f"ip-{ip.replace('.', '-')}.{ZONE}"


def target_ip(name: str) -> str | None:
    """The inverse of ``target_name``; None for any other name."""
    name = name.lower()
    if not (name.startswith("ip-") and name.endswith("." + ZONE)):
        return None
    candidate = name[3 : -len(ZONE) - 1].replace("-", ".")
    try:
        return str(ipaddress.IPv4Address(candidate))
    except ValueError:
        return None


def split_address(address: str) -> tuple[str, int]:
    """``127.0.0.1:41234`` -> (``127.0.0.1``, 41234); only IPv4 endpoints are routed."""
    host, _, port = address.rpartition(":")
    return str(ipaddress.IPv4Address(host)), int(port)


def weight_units(weights: Sequence[int], limit: int = MAX_RECORDS) -> list[int]:
    """Records per backend: the weights themselves when they fit in ``limit``, else scaled down
    by largest remainders (every backend keeps at least one record)."""
    total = sum(weights)
    if total <= limit:
        return list(weights)
    exact = [w * limit / total for w in weights]
    units = [max(1, int(x)) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order:
        if sum(units) >= limit:
            break
        units[i] += 1
    return units


class RouteTable:
    """The table as this server holds it: host -> [(address, weight)], plus fallbacks."""

    def __init__(self, document: Mapping[str, object] | None = None) -> None:
        document = document or {}
        hosts = document.get("hosts", {})
        fallback = document.get("fallback", {})
        self.hosts: dict[str, list[tuple[str, int]]] = {}
        if isinstance(hosts, dict):
            for host, backends in hosts.items():
                self.hosts[srv_name(str(host))] = [(str(a), int(w)) for a, w in backends]
        self.version = str(document.get("version", ""))
        self.fallback: dict[str, str] = (
            {str(k): str(v) for k, v in fallback.items()} if isinstance(fallback, dict) else {}
        )

    def backends(self, name: str) -> list[tuple[str, int]]:
        """A listed host's backends (Dockyard lists a host without any with its 503 responder);
        any other name gets the 404 responder."""
        found = self.hosts.get(name.lower())
        if found:
            return found
        address = self.fallback.get("unknown")
        return [(address, 1)] if address else []


def answer(table: RouteTable, wire: bytes) -> bytes:
    """The response to one DNS query."""
    try:
        query = dns.message.from_wire(wire)
    except Exception:
        return b""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    question = query.question[0]
    name = question.name.to_text()
    if question.rdtype == dns.rdatatype.SRV and name.lower().endswith("." + ZONE):
        records: list[str] = []
        backends = table.backends(name)
        units = weight_units([weight for _, weight in backends])
        for (address, _), count in zip(backends, units, strict=True):
            try:
                host, port = split_address(address)
            except ValueError:
                continue  # not an IPv4 endpoint: Caddy could not dial it by this route
            target = target_name(host)
            # Records of one RRset must differ: the SRV weight field numbers the copies.
            records.extend(f"0 {len(records) + i + 1} {port} {target}" for i in range(count))
        if records:
            response.answer.append(
                dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN, "SRV", records)
            )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype == dns.rdatatype.TXT and name.lower() == VERSION_NAME:
        response.answer.append(
            dns.rrset.from_text_list(
                question.name, 0, dns.rdataclass.IN, "TXT", [f'"{table.version}"']
            )
        )
    elif question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        resolved = target_ip(name)
        if resolved is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 3600, dns.rdataclass.IN, "A", [resolved])
            )
        # AAAA of a known name: no data (an empty answer), so the dialer uses the A record.
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


UDP_LIMIT = 1232
"""Largest answer sent over UDP (what Go's resolver reads); longer ones are truncated (TC)."""


def truncated(wire: bytes) -> bytes:
    """An empty answer with the TC flag: the client asks again over TCP."""
    try:
        response = dns.message.make_response(dns.message.from_wire(wire))
    except Exception:
        return b""
    response.flags |= dns.flags.AA | dns.flags.TC
    return response.to_wire()


class Resolver:
    """Serves ``answer`` over TCP and UDP and follows the table file.

    Answers are cached per query (all of it but the id) until the table changes: Caddy's dialer
    asks for the same ``ip-….dy.`` A record for every new upstream connection."""

    def __init__(self, table_file: Path) -> None:
        self.table_file = table_file
        self.table = RouteTable()
        self._stamp: tuple[int, int, int] | None = None
        self._cache: dict[bytes, bytes] = {}

    def respond(self, wire: bytes) -> bytes:
        if len(wire) < 12:
            return b""
        key = wire[2:]
        cached = self._cache.get(key)
        if cached is None:
            reply = answer(self.table, wire)
            if not reply:
                return b""
            cached = reply[2:]
            if len(self._cache) >= 4096:
                self._cache.clear()  # bounded: random hosts cannot grow it
            self._cache[key] = cached
        return wire[:2] + cached

    def reload(self) -> bool:
        """Read the table file when it changed (it is replaced atomically by rename)."""
        try:
            stat = self.table_file.stat()
        except FileNotFoundError:
            return False
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        try:
            document = json.loads(self.table_file.read_text())
        except (OSError, ValueError):
            return False  # caught mid-write by a writer that does not rename: next poll
        self.table = RouteTable(document)
        self._cache = {}
        self._stamp = stamp
        return True

    async def follow(self) -> None:
        while True:
            self.reload()
            await asyncio.sleep(POLL_SECONDS)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.respond(await reader.readexactly(length))
                if not reply:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.resolver.respond(data)
        if len(reply) > UDP_LIMIT:
            reply = truncated(data)
        if reply and self.transport is not None:
            self.transport.sendto(reply, addr)


async def served_version(port: int, *, wait: float = 1.0) -> str | None:
    """The table version the resolver on loopback ``port`` serves (None: no answer)."""
    import dns.asyncquery

    query = dns.message.make_query(VERSION_NAME, dns.rdatatype.TXT)
    try:
        response = await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=wait)
    except (OSError, TimeoutError, dns.exception.DNSException):
        return None
    for rrset in response.answer:
        for rdata in rrset:
            return b"".join(rdata.strings).decode()
    return None


async def serve(table_file: Path, host: str, port: int, port_file: Path | None) -> None:
    resolver = Resolver(table_file)
    resolver.reload()
    loop = asyncio.get_running_loop()
    # The writer's nudge after a new table: read it now rather than at the next poll. Installed
    # before the port is announced, so no nudge can meet SIGUSR1's default action (exit).
    loop.add_signal_handler(signal.SIGUSR1, resolver.reload)
    # TCP and UDP on one port number (a free TCP port's UDP twin may be taken: try another).
    for _ in range(20):
        server = await asyncio.start_server(resolver.handle, host, port, reuse_address=True)
        bound = server.sockets[0].getsockname()[1]
        try:
            datagrams, _protocol = await loop.create_datagram_endpoint(
                lambda: _Datagrams(resolver), local_addr=(host, bound)
            )
            break
        except OSError:
            server.close()
            await server.wait_closed()
            if port:
                raise
    else:
        raise OSError(f"no port free for both TCP and UDP on {host}")
    if port_file is not None:
        temporary = port_file.with_suffix(".tmp")
        temporary.write_text(f"{bound}\n")
        os.replace(temporary, port_file)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    follower = asyncio.create_task(resolver.follow())
    async with server:
        await stop.wait()
    follower.cancel()
    datagrams.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any)")
    parser.add_argument("--port-file", type=Path, help="where to write the bound port")
    args = parser.parse_args(argv)
    host, _, port = str(args.listen).rpartition(":")
    main_task = serve(args.table, host, int(port), args.port_file)
    try:
        import uvloop  # uvicorn[standard] brings it: a C event loop, a third of the time a query
    except ImportError:
        asyncio.run(main_task)
    else:
        uvloop.run(main_task)


if __name__ == "__main__":
    main()
