"""The route resolver's answers (pure), and the real process over TCP with dnspython."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rdatatype

from app.dataplane.dnsd import (
    Resolver,
    RouteTable,
    answer,
    served_version,
    srv_name,
    target_ip,
    target_name,
    weight_units,
)
from tests.support.server import free_port

DOCUMENT = {
    "version": "v1",
    "hosts": {
        "a.localhost": [["127.0.0.1:4001", 9], ["127.0.0.1:4002", 1]],
        "b.localhost": [["127.0.0.1:7002", 1]],
    },
    "fallback": {"unknown": "127.0.0.1:7001"},
}


def srv(table: RouteTable, host: str) -> list[tuple[str, int]]:
    query = dns.message.make_query(srv_name(host), dns.rdatatype.SRV)
    response = dns.message.from_wire(answer(table, query.to_wire()))
    return sorted(
        (rdata.target.to_text(), rdata.port) for rrset in response.answer for rdata in rrset
    )


def test_srv_answers_carry_one_record_per_weight_unit() -> None:
    table = RouteTable(DOCUMENT)
    records = srv(table, "A.localhost")  # hosts are case-insensitive
    assert records.count(("ip-127-0-0-1.dy.", 4001)) == 9
    assert records.count(("ip-127-0-0-1.dy.", 4002)) == 1
    assert srv(table, "b.localhost") == [("ip-127-0-0-1.dy.", 7002)]
    assert srv(table, "nobody.localhost") == [("ip-127-0-0-1.dy.", 7001)]


def test_targets_resolve_to_their_address_and_nothing_else_does() -> None:
    assert target_name("127.0.0.1") == "ip-127-0-0-1.dy."
    assert target_ip("IP-127-0-0-1.dy.") == "127.0.0.1"
    assert target_ip("ip-999-0-0-1.dy.") is None
    assert target_ip("example.com.") is None
    table = RouteTable(DOCUMENT)
    query = dns.message.make_query("ip-10-1-2-3.dy.", dns.rdatatype.A)
    response = dns.message.from_wire(answer(table, query.to_wire()))
    assert [r.to_text() for rrset in response.answer for r in rrset] == ["10.1.2.3"]
    # No AAAA: the dialer uses the A record at once.
    query = dns.message.make_query("ip-10-1-2-3.dy.", dns.rdatatype.AAAA)
    assert dns.message.from_wire(answer(table, query.to_wire())).answer == []


def test_large_splits_are_scaled_down_keeping_every_backend() -> None:
    assert weight_units([9, 1]) == [9, 1]
    units = weight_units([997, 3], limit=400)
    assert sum(units) == 400 and units[1] >= 1
    assert abs(units[0] / 400 - 0.997) < 0.005


def test_garbage_gets_no_answer_and_does_not_raise() -> None:
    assert answer(RouteTable(DOCUMENT), b"\x00\x01garbage") == b""


def test_cached_answers_carry_each_query_id(tmp_path: Path) -> None:
    table_file = tmp_path / "routes.json"
    table_file.write_text(json.dumps(DOCUMENT))
    resolver = Resolver(table_file)
    assert resolver.reload()
    first = dns.message.make_query("ip-127-0-0-1.dy.", dns.rdatatype.A)
    second = dns.message.make_query("ip-127-0-0-1.dy.", dns.rdatatype.A)
    second.id = (first.id + 1) % 65536
    one = dns.message.from_wire(resolver.respond(first.to_wire()))
    two = dns.message.from_wire(resolver.respond(second.to_wire()))
    assert (one.id, two.id) == (first.id, second.id)
    assert one.answer == two.answer
    assert resolver.respond(b"short") == b""


def start_resolver(table_file: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "app.dataplane.dnsd", "--table", str(table_file)]
    return subprocess.Popen([*command, "--listen", f"127.0.0.1:{port}"])


async def test_the_process_follows_its_table_file(tmp_path: Path) -> None:
    table_file = tmp_path / "routes.json"
    table_file.write_text(json.dumps(DOCUMENT))
    port = free_port()
    process = start_resolver(table_file, port)
    try:
        for _ in range(200):
            if await served_version(port) == "v1":
                break
            await asyncio.sleep(0.05)
        assert await served_version(port) == "v1"
        query = dns.message.make_query(srv_name("b.localhost"), dns.rdatatype.SRV)
        response = await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=2)
        assert [r.port for rrset in response.answer for r in rrset] == [7002]

        changed = {**DOCUMENT, "version": "v2", "hosts": {"b.localhost": [["127.0.0.1:4003", 1]]}}
        (tmp_path / "next.json").write_text(json.dumps(changed))
        os.replace(tmp_path / "next.json", table_file)
        for _ in range(100):
            if await served_version(port) == "v2":
                break
            await asyncio.sleep(0.02)
        response = await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=2)
        assert [r.port for rrset in response.answer for r in rrset] == [4003]

        # The same port answers over UDP (the dialer's A lookups); an SRV answer too large
        # for a datagram comes back truncated, so the client asks again over TCP.
        lookup = dns.message.make_query("ip-127-0-0-1.dy.", dns.rdatatype.A)
        udp = await dns.asyncquery.udp(lookup, "127.0.0.1", port=port, timeout=2)
        assert [r.to_text() for rrset in udp.answer for r in rrset] == ["127.0.0.1"]
        assert udp.id == lookup.id
        many = {"version": "v3", "hosts": {"b.localhost": [["127.0.0.1:4003", 300]]}}
        (tmp_path / "next.json").write_text(json.dumps(many))
        os.replace(tmp_path / "next.json", table_file)
        for _ in range(100):
            if await served_version(port) == "v3":
                break
            await asyncio.sleep(0.02)
        big = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)
        assert big.flags & dns.flags.TC and big.answer == []
        full = await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=2)
        assert sum(len(rrset) for rrset in full.answer) == 300
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
