"""The log hub on the in-memory bus, with a scripted runtime: one upstream stream per container
however many subscribers, deterministic ids, deduplication, slow consumers, demand expiry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import streams
from app.bus import CHANGES, LOGS_DEMAND, Bus
from app.domain.logtime import to_ns
from app.runtime.base import Capabilities, LogLine, RuntimeRejected
from app.services.streams import DROPPED_STREAM, LogChunk, LogEvent
from app.streams import LogHub, Numberer, _messages, event_key
from tests.test_bus import bus_url

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class ScriptedRuntime:
    """``log_batches`` serves the lines appended so far, then (follow) every new one; each
    read hands over whatever was appended since the previous one, as an engine does."""

    name = "scripted"
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self.opened = 0
        self.open = 0
        self.follow_opened = 0
        self.tails: list[int | None] = []
        self.failures = 0
        """Reads to fail, as Podman fails one that meets a line being written."""
        self._changed = asyncio.Event()

    def write(self, text: str, *, at: datetime | None = None, stream: str = "stdout") -> None:
        ns = to_ns(at) if at is not None else (self.lines[-1].ns if self.lines else to_ns(T0))
        self.lines.append(LogLine(ns, text, stream, 1))
        self._changed.set()

    async def log_batches(
        self,
        container_id: str,
        *,
        revision: int | None = None,
        follow: bool = True,
        tail: int | None = 100,
        since: datetime | None = None,
    ) -> AsyncIterator[list[LogLine]]:
        self.opened += 1
        self.open += 1
        self.follow_opened += follow
        self.tails.append(tail)
        if self.failures:
            self.failures -= 1
            raise RuntimeRejected("'2026-11-27T12:33:' is not a valid container log line")
        try:
            since_ns = to_ns(since.replace(microsecond=0)) if since is not None else None
            chosen = [line for line in self.lines if since_ns is None or line.ns >= since_ns]
            if tail is not None:
                chosen = chosen[max(len(chosen) - tail, 0) :] if tail else []
            position = len(self.lines)
            if chosen:
                yield chosen
            while follow:
                self._changed.clear()
                await self._changed.wait()
                if self.lines[position:]:
                    yield self.lines[position:]
                position = len(self.lines)
        finally:
            self.open -= 1


async def take(chunks: AsyncIterator[LogChunk], count: int, within: float = 5) -> list[LogEvent]:
    """The events of whole chunks, until there are at least ``count`` (or the stream ends)."""
    taken: list[LogEvent] = []
    async with asyncio.timeout(within):
        async for chunk in chunks:
            taken.extend(chunk)
            if len(taken) >= count:
                break
    return taken


async def drain(chunks: AsyncIterator[LogChunk]) -> list[LogEvent]:
    return [event async for chunk in chunks for event in chunk]


async def until(predicate: Callable[[], bool], within: float = 5) -> None:
    """Poll: the conditions are counters of the hub, which signals nothing."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def runtime() -> ScriptedRuntime:
    return ScriptedRuntime()


@pytest.fixture
async def hub(runtime: ScriptedRuntime) -> AsyncIterator[LogHub]:
    hub = LogHub(Bus("memory://"), runtime, queue_lines=5, demand_heartbeat_seconds=0.05)  # type: ignore[arg-type]
    await hub.start()
    yield hub
    await hub.stop()


def test_ids_count_lines_sharing_a_timestamp_across_batches() -> None:
    ns = to_ns(T0)
    numberer = Numberer()
    stamps = [[ns, ns], [ns, ns + 5], [ns + 5, ns]]
    ids = [
        event.id
        for batch in stamps
        for event in numberer.number([LogLine(t, f"l{t}", "stdout", 1) for t in batch])
    ]
    assert ids == [f"{ns}-0", f"{ns}-1", f"{ns}-2", f"{ns + 5}-0", f"{ns + 5}-1", f"{ns}-0"]
    assert event_key(ids[1]) == (ns, 1)
    assert event_key("garbage") is None


def test_chunks_skip_what_a_subscriber_already_has() -> None:
    events = [LogEvent(10, k, f"l{k}", "stdout", 1) for k in range(4)]
    chunk = LogChunk.of(events)
    assert chunk.after((9, 0)) is chunk
    assert chunk.after((10, 3)) is None
    rest = chunk.after((10, 1))
    assert rest is not None and [e.line for e in rest] == ["l2", "l3"]
    assert rest.text(lambda e: e.line) == "l2l3" and chunk.text(lambda e: e.line) == "l0l1l2l3"
    marker = LogChunk.of([LogEvent.marker(3, events[0])])
    assert marker.after((99, 0)) is marker and marker.first.id == ""


def test_bus_messages_fit_a_size_limit() -> None:
    rows = [[n, 0, "x" * 100, "stdout", 1] for n in range(500)] + [
        [500, 0, "é" * 9000, "stdout", 1]
    ]
    unlimited = _messages(rows, None)
    assert [len(m) for m in unlimited] == [501]
    limited = _messages(rows, 7900)
    assert sum(len(m) for m in limited) == 501 and len(limited) > 1
    assert all(len(json.dumps({"lines": m}).encode()) < 7900 for m in limited)
    assert limited[-1][-1][2].endswith(" [line cut]")


async def test_subscribers_share_one_upstream_and_get_backlog_then_live_lines(
    hub: LogHub, runtime: ScriptedRuntime
) -> None:
    now = datetime.now(UTC)
    for n in range(3):
        runtime.write(f"old {n}", at=now)
    first = hub.logs("c1", tail=2, follow=True)
    second = hub.logs("c1", tail=0, follow=True)
    backlog = await take(first, 2)
    assert [e.line for e in backlog] == ["old 1", "old 2"]
    assert [e.id for e in backlog] == [f"{to_ns(now)}-1", f"{to_ns(now)}-2"]
    second_task = asyncio.ensure_future(take(second, 2))
    await until(lambda: hub.local_subscribers == 2 and hub.upstream.open == 1)
    runtime.write("new 1", at=now + timedelta(seconds=1))
    runtime.write("new 2")
    # The pump republishes its lookback too; the first subscriber skips what it already has.
    assert [e.line for e in await take(first, 2)] == ["new 1", "new 2"]
    assert [e.line for e in await second_task] == ["old 0", "old 1", "old 2"]  # no backlog
    assert runtime.follow_opened == 1 and hub.upstream.opened == 1 and hub.pumps == 1
    await first.aclose()  # type: ignore[attr-defined]
    await second.aclose()  # type: ignore[attr-defined]
    await until(lambda: hub.pumps == 0 and runtime.open == 0 and hub.local_subscribers == 0)


async def test_without_follow_the_backlog_ends(hub: LogHub, runtime: ScriptedRuntime) -> None:
    for n in range(4):
        runtime.write(f"line {n}", at=T0 + timedelta(seconds=n // 2))
    events = await drain(hub.logs("c1", tail=3, follow=False))
    # Numbered from the whole second of the first tail line: ids match every other reader.
    assert [(e.line, e.id.split("-")[1]) for e in events] == [
        ("line 1", "1"),
        ("line 2", "0"),
        ("line 3", "1"),
    ]
    assert hub.pumps == 0 and runtime.follow_opened == 0


async def test_resume_after_an_event_id(hub: LogHub, runtime: ScriptedRuntime) -> None:
    for n in range(6):
        runtime.write(f"line {n}", at=T0 + timedelta(seconds=n // 3))
    everything = await drain(hub.logs("c1", tail=None, follow=False))
    resumed = await drain(hub.logs("c1", tail=1, follow=False, after=everything[1].id))
    assert [e.line for e in resumed] == ["line 2", "line 3", "line 4", "line 5"]
    assert [e.id for e in resumed] == [e.id for e in everything[2:]]


async def test_a_slow_subscriber_loses_its_oldest_lines_and_is_told(
    hub: LogHub, runtime: ScriptedRuntime
) -> None:
    now = datetime.now(UTC)
    slow = hub.logs("c1", tail=0, follow=True)
    fast = hub.logs("c1", tail=0, follow=True)
    slow_first = asyncio.ensure_future(take(slow, 1))
    fast_all = asyncio.ensure_future(take(fast, 20))
    await until(lambda: hub.upstream.open == 1 or runtime.follow_opened == 1)
    await until(lambda: hub.local_subscribers == 2)
    for n in range(20):
        runtime.write(f"n{n}", at=now + timedelta(seconds=1, microseconds=n))
        await asyncio.sleep(0)  # the fast one keeps up
    assert [e.line for e in await fast_all] == [f"n{n}" for n in range(20)]
    first = await slow_first
    assert [e.line for e in first] == [f"n{n}" for n in range(len(first))]
    rest = await take(slow, 6)
    marker, *kept = rest
    # It holds 5 lines at most: everything between what it read and the last 5 went.
    assert (marker.stream, marker.dropped) == (DROPPED_STREAM, 15 - len(first))
    assert marker.line == f"{15 - len(first)} lines dropped"
    assert [e.line for e in kept] == [f"n{n}" for n in range(15, 20)]
    await slow.aclose()  # type: ignore[attr-defined]
    await fast.aclose()  # type: ignore[attr-defined]


async def test_deleting_the_container_ends_its_streams(
    hub: LogHub, runtime: ScriptedRuntime
) -> None:
    events = hub.logs("c1", tail=0, follow=True)
    collected = asyncio.ensure_future(take(events, 100))
    await until(lambda: hub.pumps == 1)
    hub.service_changed("c1", "deleted")
    assert await collected == []
    await until(lambda: hub.pumps == 0 and runtime.open == 0)


async def test_status_yields_on_every_change_of_that_container(hub: LogHub) -> None:
    changes = hub.status("c1")
    first = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.01)
    hub.service_changed("other", "spec")
    await hub.status_changed("c1", "status")
    assert await first == "status"
    hub.service_changed("c1", "spec")
    assert await anext(changes) == "spec"
    await changes.aclose()


async def test_a_status_watch_sees_changes_from_its_creation_not_its_first_read(
    hub: LogHub,
) -> None:
    """A subscription creates the watch, reads the container, sends it, and only then waits for
    changes: a change delivered in between must still wake it (it did not when the watch was
    registered at its first iteration, and a replica's subscriber then missed `deployed`)."""
    changes = hub.status("c1")
    await hub.status_changed("c1", "status")
    await asyncio.sleep(0.05)  # delivered by the bus before anyone iterates
    assert await asyncio.wait_for(anext(changes), 2) == "status"
    await changes.aclose()
    assert "c1" not in hub._status_waiters
    with pytest.raises(StopAsyncIteration):
        await anext(changes)


async def test_demand_from_a_silent_replica_expires(hub: LogHub, runtime: ScriptedRuntime) -> None:
    # A subscriber on another replica joined, then its replica died without leaving.
    await hub.bus.publish(LOGS_DEMAND, {"id": "c1", "subscriber": "dead/1", "op": "join"})
    await until(lambda: hub.pumps == 1)
    await until(lambda: hub.pumps == 0, within=2)
    await until(lambda: runtime.open == 0)  # the cancelled pump closes its stream


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_stalled_event_loop_does_not_forget_a_live_subscriber(
    kind: str, runtime: ScriptedRuntime, request: pytest.FixtureRequest
) -> None:
    # A CPU-starved process runs the heartbeat round that ends a stall before it reads the
    # heartbeats sent meanwhile. Counted in seconds, the stall looked like a dead replica: the
    # pump was cancelled (losing the lines it had not published yet) and restarted from a
    # look-back that a burst outruns.
    heartbeat = 0.05 if kind == "memory" else 0.2
    hub = LogHub(Bus(bus_url(kind, request)), runtime, demand_heartbeat_seconds=heartbeat)  # type: ignore[arg-type]
    await hub.start()
    try:
        events = hub.logs("c1", tail=0, follow=True)
        reader = asyncio.ensure_future(take(events, 1))
        await until(lambda: runtime.follow_opened == 1)
        stall = heartbeat * (streams.MISSED_HEARTBEATS + 2)
        # Block the event loop on purpose, as CPU starvation or a long synchronous step does.
        time.sleep(stall)  # noqa: ASYNC251
        await asyncio.sleep(stall)  # heartbeat rounds after the stall
        assert hub.pumps == 1 and runtime.follow_opened == 1  # the same pump, never reopened
        runtime.write("after the stall", at=datetime.now(UTC) + timedelta(seconds=1))
        assert [e.line for e in await reader] == ["after the stall"]
        await events.aclose()  # type: ignore[attr-defined]
    finally:
        await hub.stop()


async def test_only_the_leader_pumps(runtime: ScriptedRuntime) -> None:
    leading = False
    hub = LogHub(
        Bus("memory://"), runtime, is_leader=lambda: leading, demand_heartbeat_seconds=0.05
    )  # type: ignore[arg-type]
    await hub.start()
    try:
        events = hub.logs("c1", tail=0, follow=True)
        reader = asyncio.ensure_future(take(events, 1))
        await asyncio.sleep(0.2)
        assert hub.pumps == 0
        leading = True  # elected: the next heartbeat round starts the pump
        await until(lambda: hub.pumps == 1)
        runtime.write("hello", at=datetime.now(UTC) + timedelta(seconds=1))
        assert [e.line for e in await reader] == ["hello"]
        await events.aclose()  # type: ignore[attr-defined]
    finally:
        await hub.stop()


async def test_a_pump_on_a_long_log_starts_from_a_cheap_tail_read(
    hub: LogHub, runtime: ScriptedRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Engines scan the whole log for `since`; a long log is read back with `tail` instead. The
    # lines of the timestamp the read starts in are kept: a new subscriber must not wait for
    # that timestamp to end (a whole second on Podman).
    monkeypatch.setattr(streams, "PUMP_TAIL_LINES", 5)
    now = datetime.now(UTC)
    for n in range(12):
        runtime.write(f"old {n}", at=now - timedelta(seconds=1) if n < 9 else now)
    events = hub.logs("c1", tail=0, follow=True)
    reader = asyncio.ensure_future(take(events, 5))
    await until(lambda: runtime.follow_opened == 1)
    assert runtime.tails[-1] == 5
    assert [e.line for e in await reader] == [f"old {n}" for n in range(7, 12)]
    runtime.write("new 1", at=now + timedelta(seconds=1))
    assert [e.line for e in await take(events, 1)] == ["new 1"]
    await events.aclose()  # type: ignore[attr-defined]


async def test_a_tail_backlog_drops_a_partial_timestamp_when_it_has_enough_lines(
    hub: LogHub, runtime: ScriptedRuntime
) -> None:
    second = T0 + timedelta(seconds=1)
    for n in range(600):  # a read of tail + 200 lines starts inside T0's lines
        runtime.write(f"a{n}", at=T0 if n < 450 else second)
    events = await drain(hub.logs("c1", tail=100, follow=False))
    assert [e.line for e in events] == [f"a{n}" for n in range(500, 600)]
    assert events[0].id == f"{to_ns(second)}-50"  # exact: the read saw all of that second
    # Too few lines after the partial timestamp: they are kept (with approximate ids).
    events = await drain(hub.logs("c1", tail=200, follow=False))
    assert [e.line for e in events] == [f"a{n}" for n in range(400, 600)]


@pytest.mark.parametrize("kind", ["memory", "redis", "postgres"])
async def test_a_burst_of_long_lines_crosses_a_shared_bus_whole(
    kind: str, runtime: ScriptedRuntime, request: pytest.FixtureRequest
) -> None:
    # PostgreSQL's NOTIFY refuses payloads of 8000 bytes or more: the pump splits its batches.
    url = bus_url(kind, request)
    leader = LogHub(Bus(url), runtime, queue_lines=10_000, demand_heartbeat_seconds=0.2)  # type: ignore[arg-type]
    other = LogHub(Bus(url), None, queue_lines=10_000, demand_heartbeat_seconds=0.2)
    await leader.start()
    if url != "memory://":
        await other.start()
    replica = other if url != "memory://" else leader  # memory:// is one process's bus
    try:
        chunks = replica.logs("c1", tail=0, follow=True)
        reader = asyncio.ensure_future(take(chunks, 3000, within=30))
        await until(lambda: runtime.follow_opened == 1, within=10)
        now = datetime.now(UTC) + timedelta(seconds=1)
        for n in range(3000):
            text = f"{n} " + ("é" if n % 2 else "x") * 300
            runtime.write(text, at=now + timedelta(microseconds=n // 10))
        received = await reader
        assert [e.line for e in received] == [
            f"{n} " + ("é" if n % 2 else "x") * 300 for n in range(3000)
        ]
        assert len({e.id for e in received}) == 3000
        await chunks.aclose()
    finally:
        await leader.stop()
        if url != "memory://":
            await other.stop()


async def test_a_backlog_read_that_fails_once_is_tried_again(
    hub: LogHub, runtime: ScriptedRuntime
) -> None:
    for n in range(3):
        runtime.write(f"line {n}", at=T0 + timedelta(seconds=n))
    runtime.failures = 1
    events = await drain(hub.logs("c1", tail=2, follow=False))
    assert [e.line for e in events] == ["line 1", "line 2"]
    runtime.failures = 2  # fails twice: the stream still works, without a backlog
    assert await drain(hub.logs("c1", tail=2, follow=False)) == []


async def test_desired_changes_from_other_replicas_wake_the_leader(hub: LogHub) -> None:
    """A traffic change (no new revision) on another replica reconciles here like a spec one;
    observed status changes do not."""
    woken: list[str] = []
    hub.on_remote_change = woken.append
    changes = hub.status("c1")
    for kind in ("status", "traffic", "spec"):
        await hub.bus.publish(CHANGES, {"id": "c1", "kind": kind, "origin": "another-replica"})
        assert await anext(changes) == kind
    hub.service_changed("c1", "traffic")  # this replica's own write: already handled here
    assert await anext(changes) == "traffic"
    assert woken == ["c1", "c1"]
    await changes.aclose()
class TwoRevisionRuntime(ScriptedRuntime):
    """Lists the revisions that printed and serves each one's lines on its own stream (the
    newest one's when no revision is asked for), as engines do."""

    def _present(self) -> set[int]:
        return {line.revision for line in self.lines} or {1}

    async def list_managed(self) -> dict[str, set[int]]:
        return {"c1": self._present()}

    async def log_batches(  # type: ignore[override]
        self, container_id: str, *, revision: int | None = None, **options: Any
    ) -> AsyncIterator[list[LogLine]]:
        wanted = revision if revision is not None else max(self._present())
        async for batch in super().log_batches(container_id, revision=revision, **options):
            mine = [line for line in batch if line.revision == wanted]
            if mine:
                yield mine


async def test_a_follower_gets_each_revisions_lines_deduplicated_per_revision() -> None:
    """During a drain two revisions print with overlapping timestamps: one upstream each, a
    live chunk of one revision is never cut by the other's position, and a resuming client
    gets nothing twice."""
    runtime = TwoRevisionRuntime()
    hub = LogHub(Bus("memory://"), runtime, queue_lines=50, demand_heartbeat_seconds=0.05)  # type: ignore[arg-type]
    await hub.start()
    try:
        await _two_revisions(hub, runtime)
    finally:
        await hub.stop()


async def _two_revisions(hub: LogHub, runtime: ScriptedRuntime) -> None:
    now = datetime.now(UTC)
    runtime.write("r1 a", at=now)
    runtime.write("r1 b", at=now + timedelta(milliseconds=20))
    followed = hub.logs("c1", tail=2, follow=True)
    assert [e.line for e in await take(followed, 2)] == ["r1 a", "r1 b"]
    runtime.write("r1 b2", at=now + timedelta(milliseconds=25))
    assert [e.line for e in await take(followed, 1)] == ["r1 b2"]  # the upstream of r1 is open
    # revision 2 started a moment before revision 1's last line: older timestamps, other revision
    runtime.lines.append(LogLine(to_ns(now + timedelta(milliseconds=10)), "r2 a", "stdout", 2))
    runtime.write("r1 c", at=now + timedelta(milliseconds=30))
    live = await take(followed, 2)
    # each revision's upstream delivers on its own: both lines arrive, in either order
    assert sorted((e.revision, e.line) for e in live) == [(1, "r1 c"), (2, "r2 a")]
    assert hub.upstream.open == 2
    await followed.aclose()  # type: ignore[attr-defined]
    await until(lambda: hub.pumps == 0)  # gone: the next follower's pump starts anew
    # Reconnecting after "r1 c": the pump's look-back still holds "r2 a", which is not repeated.
    last_seen = max(live, key=lambda e: e.key)
    runtime.write("r1 d", at=now + timedelta(milliseconds=40))  # while it was away
    resumed = hub.logs("c1", tail=None, follow=True, after=last_seen.id)
    assert [e.line for e in await take(resumed, 1)] == ["r1 d"]  # its backlog
    runtime.write("r1 e", at=now + timedelta(milliseconds=50))
    assert [e.line for e in await take(resumed, 1)] == ["r1 e"]  # not "r2 a" again
    await resumed.aclose()  # type: ignore[attr-defined]


async def test_a_resume_gets_what_every_revision_printed_meanwhile() -> None:
    runtime = TwoRevisionRuntime()
    hub = LogHub(Bus("memory://"), runtime, queue_lines=50, demand_heartbeat_seconds=0.05)  # type: ignore[arg-type]
    await hub.start()
    try:
        now = datetime.now(UTC)
        runtime.write("r1 a", at=now)
        seen = await drain(hub.logs("c1", tail=1, follow=False))
        # the client is away while revision 2 starts beside revision 1
        runtime.lines.append(LogLine(to_ns(now + timedelta(milliseconds=10)), "r2 a", "stdout", 2))
        runtime.write("r1 b", at=now + timedelta(milliseconds=20))
        runtime.lines.append(LogLine(to_ns(now + timedelta(milliseconds=30)), "r2 b", "stdout", 2))
        resumed = await drain(hub.logs("c1", tail=None, follow=False, after=seen[-1].id))
        assert [(e.revision, e.line) for e in resumed] == [
            (2, "r2 a"),
            (1, "r1 b"),
            (2, "r2 b"),
        ]
    finally:
        await hub.stop()
