"""DockerRuntime against a real Podman engine (Docker-compatible API), no mocks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import httpx
import pytest

from app.runtime.base import (
    LABEL_CONTAINER_ID,
    LABEL_GPU,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    LABEL_REVISION,
    LogLine,
    Phase,
    RevisionState,
    Runtime,
    RuntimeEvent,
    RuntimeRejected,
    RuntimeUnavailable,
    SignalsReady,
    WorkloadSpec,
)
from app.runtime.docker import (
    DockerRuntime,
    container_create_kwargs,
    listening_ports,
    parse_engine_time,
)
from tests.support.logs import lines_of
from tests.support.podman import (
    CRASH,
    HTTPD_V1,
    HTTPD_V2,
    LOGGER,
    PAGE_V1,
    PAGE_V2,
    RUN_INSTANCE,
    RUN_LABELS,
)


def make_spec(
    container_id: str, revision: int = 1, image: str = HTTPD_V1, **changes: object
) -> WorkloadSpec:
    fields: dict[str, object] = {
        "container_id": container_id,
        "revision": revision,
        "name": "web",
        "owner": "alice",
        "slug": "web",
        "image": image,
        "cpu": 0.5,
        "ram": "64Mi",
        "ram_bytes": 64 * 1024 * 1024,
        "gpu": 0,
        "ephemeral_storage": "",
        "ephemeral_storage_bytes": 0,
        "port": 8080,
        "env": {"GREETING": "hello"},
    }
    fields.update(changes)
    return WorkloadSpec(**fields)  # type: ignore[arg-type]


# -- pure -----------------------------------------------------------------------------------------


def test_container_create_kwargs_maps_the_spec() -> None:
    spec = make_spec(
        "abc",
        revision=3,
        cpu=1.5,
        command=("/bin/server",),
        arguments=("--port", "8080"),
        gpu=2,
        ephemeral_storage_bytes=10**9,
    )
    kwargs = container_create_kwargs(spec, crashloop_restarts=4, enforce_storage=True)
    assert kwargs["name"] == "dockyard-abc-r3"
    assert kwargs["image"] == HTTPD_V1
    assert kwargs["labels"] == {
        LABEL_CONTAINER_ID: "abc",
        LABEL_REVISION: "3",
        LABEL_REPLICA: "0",
        LABEL_GPU: "2",
        LABEL_MANAGED_BY: "dockyard",
    }
    assert kwargs["nano_cpus"] == 1_500_000_000
    assert kwargs["mem_limit"] == 64 * 1024 * 1024
    assert kwargs["environment"] == {"GREETING": "hello"}
    assert kwargs["entrypoint"] == ["/bin/server"]
    assert kwargs["command"] == ["--port", "8080"]
    assert kwargs["ports"] == {"8080/tcp": ("127.0.0.1", None)}
    assert kwargs["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 4}
    [request] = kwargs["device_requests"]
    assert request["Count"] == 2
    assert request["Capabilities"] == [["gpu"]]
    assert kwargs["storage_opt"] == {"size": str(10**9)}


def test_container_create_kwargs_defaults() -> None:
    kwargs = container_create_kwargs(make_spec("abc"))
    assert "entrypoint" not in kwargs and "command" not in kwargs
    assert "device_requests" not in kwargs and "storage_opt" not in kwargs
    # A command without arguments drops the image's CMD (Kubernetes semantics).
    kwargs = container_create_kwargs(make_spec("abc", command=("/bin/x",)))
    assert kwargs["entrypoint"] == ["/bin/x"] and kwargs["command"] == []
    kwargs = container_create_kwargs(make_spec("abc", arguments=("-v",)))
    assert "entrypoint" not in kwargs and kwargs["command"] == ["-v"]


def test_further_instances_get_their_own_name_and_replica_label() -> None:
    kwargs = container_create_kwargs(make_spec("abc", revision=3), replica=2)
    assert kwargs["name"] == "dockyard-abc-r3-i2"
    assert kwargs["labels"][LABEL_REPLICA] == "2"
    assert LABEL_GPU not in kwargs["labels"]


def test_parse_engine_time() -> None:
    assert parse_engine_time("2026-11-27T09:15:49.265718103Z") == datetime(
        2026, 11, 27, 9, 15, 49, 265718, tzinfo=UTC
    )
    assert parse_engine_time("2026-11-27T09:16:03Z") == datetime(2026, 11, 27, 9, 16, 3, tzinfo=UTC)
    assert parse_engine_time("2026-11-27T10:16:03.5+01:00") == datetime(
        2026, 11, 27, 9, 16, 3, 500000, tzinfo=UTC
    )
    assert parse_engine_time("0001-01-01T00:00:00Z") is None
    assert parse_engine_time("garbage") is None


def test_docker_runtime_satisfies_the_protocol() -> None:
    assert isinstance(DockerRuntime("unix:///nonexistent.sock"), Runtime)


async def test_unreachable_engine_raises_runtime_unavailable(tmp_path: object) -> None:
    rt = DockerRuntime("unix:///nonexistent/dockyard/podman.sock", api_timeout=5)
    try:
        with pytest.raises(RuntimeUnavailable) as info:
            await rt.observe("abc")
        assert info.value.__cause__ is not None
        with pytest.raises(RuntimeUnavailable):
            await rt.apply(make_spec("abc"))
        with pytest.raises(RuntimeUnavailable):
            await rt.list_managed()
        with pytest.raises(RuntimeUnavailable):
            await rt.remove("abc")
        with pytest.raises(RuntimeUnavailable):
            async with aclosing(rt.watch()) as events:
                async for _ in events:
                    pass
        with pytest.raises(RuntimeUnavailable):
            async with aclosing(read_logs(rt, "abc")) as lines:
                async for _ in lines:
                    pass
    finally:
        await rt.close()


# -- against Podman -------------------------------------------------------------------------------

pytestmark_podman = pytest.mark.podman


async def wait_for_state(
    rt: DockerRuntime,
    container_id: str,
    revision: int,
    done: Callable[[RevisionState], bool],
    within: float = 30,
) -> tuple[RevisionState, list[RevisionState]]:
    seen: list[RevisionState] = []
    deadline = time.monotonic() + within
    while True:
        states = {s.revision: s for s in await rt.observe(container_id)}
        state = states.get(revision)
        if state is not None:
            seen.append(state)
            if done(state):
                return state, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"revision {revision} not done within {within}s; seen {seen}")
        await asyncio.sleep(0.25)


def is_phase(phase: Phase) -> Callable[[RevisionState], bool]:
    return lambda s: s.phase == phase


async def wait_ready(rt: DockerRuntime, container_id: str, revision: int) -> RevisionState:
    state, seen = await wait_for_state(
        rt, container_id, revision, lambda s: s.phase != Phase.PENDING
    )
    assert state.phase == Phase.READY, seen
    assert all(s.phase == Phase.PENDING for s in seen[:-1]), seen
    return state


def engine(podman_url: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=podman_url)


@pytest.mark.podman
async def test_apply_runs_the_revision_until_ready_and_serves(
    runtime: DockerRuntime, container_id: str
) -> None:
    await runtime.apply(make_spec(container_id))
    state = await wait_ready(runtime, container_id, 1)
    assert state.endpoint is not None and state.endpoint.startswith("127.0.0.1:")
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://{state.endpoint}/index.html", timeout=5)
    assert response.status_code == 200
    assert response.text == PAGE_V1


@pytest.mark.podman
async def test_apply_is_idempotent(
    runtime: DockerRuntime, container_id: str, podman_url: str
) -> None:
    spec = make_spec(container_id)
    await runtime.apply(spec)
    client = engine(podman_url)
    try:
        [first] = client.containers.list(all=True, filters={"name": f"dockyard-{container_id}-r1"})
        await asyncio.gather(runtime.apply(spec), runtime.apply(spec))
        await runtime.apply(spec)
        found = client.containers.list(
            all=True, filters={"label": f"{LABEL_CONTAINER_ID}={container_id}"}
        )
        assert [c.id for c in found] == [first.id]
    finally:
        client.close()
    assert (await runtime.list_managed())[container_id] == {1}


@pytest.mark.podman
async def test_apply_maps_the_spec_onto_the_engine_container(
    runtime: DockerRuntime, container_id: str, podman_url: str
) -> None:
    spec = make_spec(
        container_id,
        revision=7,
        cpu=0.25,
        ram_bytes=96 * 1024 * 1024,
        env={"GREETING": "hello", "MODE": "test"},
        command=("/bin/busybox",),
        arguments=("httpd", "-f", "-p", "8080", "-h", "/www"),
        ephemeral_storage="1Gi",
        ephemeral_storage_bytes=2**30,
    )
    await runtime.apply(spec)
    client = engine(podman_url)
    try:
        c = client.containers.get(f"dockyard-{container_id}-r7")
        attrs = c.attrs
    finally:
        client.close()
    assert attrs["Config"]["Labels"][LABEL_CONTAINER_ID] == container_id
    assert attrs["Config"]["Labels"][LABEL_REVISION] == "7"
    assert attrs["Config"]["Labels"][LABEL_MANAGED_BY] == "dockyard"
    assert attrs["HostConfig"]["NanoCpus"] == 250_000_000
    assert attrs["HostConfig"]["Memory"] == 96 * 1024 * 1024
    assert {"GREETING=hello", "MODE=test"} <= set(attrs["Config"]["Env"])
    assert attrs["Config"]["Entrypoint"] == ["/bin/busybox"]
    assert attrs["Config"]["Cmd"] == ["httpd", "-f", "-p", "8080", "-h", "/www"]
    assert attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    [binding] = attrs["HostConfig"]["PortBindings"]["8080/tcp"]
    assert binding["HostIp"] == "127.0.0.1"
    # Podman on overlay/ext4 refuses storage_opt: the limit is dropped, the revision still runs.
    await wait_ready(runtime, container_id, 7)


@pytest.mark.podman
async def test_gpu_request_is_rejected_by_an_engine_without_gpus(
    runtime: DockerRuntime, container_id: str
) -> None:
    with pytest.raises(RuntimeRejected, match="GPU"):
        await runtime.apply(make_spec(container_id, gpu=1))
    assert container_id not in await runtime.list_managed()


@pytest.mark.podman
async def test_second_revision_runs_beside_the_first_until_retired(
    runtime: DockerRuntime, container_id: str
) -> None:
    await runtime.apply(make_spec(container_id, 1, HTTPD_V1))
    await runtime.apply(make_spec(container_id, 2, HTTPD_V2))
    first = await wait_ready(runtime, container_id, 1)
    second = await wait_ready(runtime, container_id, 2)
    assert first.endpoint != second.endpoint
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://{first.endpoint}/", timeout=5)).text == PAGE_V1
        assert (await http.get(f"http://{second.endpoint}/", timeout=5)).text == PAGE_V2
    assert (await runtime.list_managed())[container_id] == {1, 2}

    await runtime.retire(container_id, keep={2})
    await runtime.retire(container_id, keep={2})  # idempotent
    states = await runtime.observe(container_id)
    assert [(s.revision, s.phase) for s in states] == [(2, Phase.READY)]
    assert (await runtime.list_managed())[container_id] == {2}


@pytest.mark.podman
async def test_missing_image_is_reported_failed_and_retried_by_a_later_apply(
    runtime: DockerRuntime, container_id: str, podman_url: str
) -> None:
    image = f"localhost/dockyard-test-missing-{container_id}:v1"
    await runtime.apply(make_spec(container_id, image=image))  # does not raise
    [state] = await runtime.observe(container_id)
    assert state.phase == Phase.FAILED
    assert state.reason == "ImagePullBackOff"
    assert image in state.message
    assert "nothing retries by itself" in state.message and "redeploy" in state.message
    assert container_id not in await runtime.list_managed()  # no engine object

    client = engine(podman_url)
    try:
        client.images.get(HTTPD_V1).tag(image.rsplit(":", 1)[0], "v1")
        await runtime.apply(make_spec(container_id, image=image))
        await wait_ready(runtime, container_id, 1)
    finally:
        await runtime.remove(container_id)
        client.images.remove(image)
        client.close()


@pytest.mark.podman
async def test_crash_looping_revision_fails_with_exit_code_and_logs(
    runtime: DockerRuntime, container_id: str
) -> None:
    await runtime.apply(make_spec(container_id, image=CRASH))
    state, seen = await wait_for_state(runtime, container_id, 1, is_phase(Phase.FAILED))
    assert state.reason == "CrashLoopBackOff", seen
    assert "exited with code 3" in state.message
    assert "boom" in state.message and "oops" in state.message


@pytest.mark.podman
async def test_exit_zero_is_failed_exited(runtime: DockerRuntime, container_id: str) -> None:
    await runtime.apply(make_spec(container_id, command=("/bin/sh", "-c", "echo bye; exit 0")))
    state, _ = await wait_for_state(runtime, container_id, 1, is_phase(Phase.FAILED))
    assert state.reason == "Exited"
    assert "exited with code 0" in state.message and "bye" in state.message


@pytest.mark.podman
async def test_port_that_never_opens_fails_with_readiness_timeout(
    podman_url: str, container_id: str
) -> None:
    rt = DockerRuntime(podman_url, readiness_timeout=3, labels=RUN_LABELS, instance=RUN_INSTANCE)
    try:
        await rt.apply(make_spec(container_id, command=("/bin/busybox", "sleep", "3600")))
        [pending] = await rt.observe(container_id)
        assert pending.phase == Phase.PENDING
        state, seen = await wait_for_state(rt, container_id, 1, is_phase(Phase.FAILED), 20)
        assert state.reason == "ReadinessTimeout"
        assert "port 8080 did not accept connections within 3s" in state.message
        assert "the process listens on no TCP port" in state.message
        assert all(s.phase == Phase.PENDING for s in seen[:-1])
        assert "waiting for port 8080" in seen[0].message
    finally:
        await rt.close()


def test_listening_ports_reads_the_proc_tables(tmp_path: Any) -> None:
    net = tmp_path / "42" / "net"
    net.mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    (net / "tcp").write_text(
        header
        + "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
        + "   1: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0\n"
    )
    (net / "tcp6").write_text(
        header + "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000"
        ":0000 0A 00000000:00000000 00:00000000 00000000     0\n"
    )
    assert listening_ports(42, proc=str(tmp_path)) == {8080, 80}  # LISTEN only, v4 and v6
    assert listening_ports(43, proc=str(tmp_path)) is None
    assert listening_ports(0) is None


@pytest.mark.podman
async def test_wrong_port_fails_early_naming_the_ports_and_stops_the_container(
    podman_url: str, container_id: str
) -> None:
    rt = DockerRuntime(
        podman_url, readiness_timeout=20, stop_timeout=1, labels=RUN_LABELS, instance=RUN_INSTANCE
    )
    client = docker.DockerClient(base_url=podman_url, version="1.41")
    try:
        started = time.monotonic()
        await rt.apply(make_spec(container_id, port=9999))  # httpd listens on 8080
        state, _ = await wait_for_state(rt, container_id, 1, is_phase(Phase.FAILED), 45)
        # Where the listening ports can be read (/proc/<pid>/net/tcp of the engine's pid) it
        # fails within seconds; where they cannot, at the readiness timeout, naming the port.
        if state.reason == "PortMismatch":
            assert time.monotonic() - started < 20  # before the readiness timeout
            assert "declared port 9999" in state.message
            assert "listens on TCP 8080" in state.message
        else:
            assert state.reason == "ReadinessTimeout", state
            assert "port 9999 did not accept connections" in state.message
        assert "the image exposes no port" in state.message  # a `podman import`-ed image
        assert "was stopped" in state.message
        (engine,) = client.containers.list(
            all=True, filters={"label": f"dockyard.dev/container-id={container_id}"}
        )
        assert engine.status == "exited"
        [again] = await rt.observe(container_id)
        assert again.reason == "PortMismatch"  # the reason stays, not the exit code
    finally:
        client.close()
        await rt.close()


@pytest.mark.podman
async def test_remove_deletes_every_revision(runtime: DockerRuntime, container_id: str) -> None:
    await runtime.apply(make_spec(container_id, 1))
    await runtime.apply(make_spec(container_id, 2, HTTPD_V2))
    assert (await runtime.list_managed())[container_id] == {1, 2}
    await runtime.remove(container_id)
    await runtime.remove(container_id)  # idempotent
    assert container_id not in await runtime.list_managed()
    assert await runtime.observe(container_id) == []


def read_logs(runtime: DockerRuntime, container_id: str, **options: Any) -> AsyncIterator[LogLine]:
    return lines_of(runtime.log_batches(container_id, **options))


async def cancel_and_check_released(runtime: DockerRuntime, task: asyncio.Task[None]) -> None:
    """Cancel a task reading an engine stream: it ends, and the stream is closed."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    await until(lambda: runtime.open_streams == 0)


@pytest.mark.podman
async def test_watch_yields_events_and_stops_when_cancelled(
    runtime: DockerRuntime, container_id: str
) -> None:
    got: list[RuntimeEvent] = []
    seen = asyncio.Event()

    async def consume() -> None:
        async for event in runtime.watch():
            got.append(event)
            if event.container_id == container_id:
                seen.set()

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)  # let the events stream open
    await runtime.apply(make_spec(container_id))
    await asyncio.wait_for(seen.wait(), 15)
    await cancel_and_check_released(runtime, task)


@pytest.mark.podman
async def test_watch_stops_when_the_consumer_breaks(
    runtime: DockerRuntime, container_id: str
) -> None:
    async def first_event() -> RuntimeEvent:
        async with aclosing(runtime.watch()) as events:
            async for event in events:
                if event.container_id == container_id:
                    return event
        raise AssertionError("stream ended")

    waiter = asyncio.create_task(first_event())
    await asyncio.sleep(0.5)
    await runtime.apply(make_spec(container_id))
    assert (await asyncio.wait_for(waiter, 15)).container_id == container_id
    await until(lambda: runtime.open_streams == 0)


async def until(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]], within: float = 5
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.mark.podman
async def test_logs_tail_returns_the_printed_lines_with_stream_and_revision(
    runtime: DockerRuntime, container_id: str
) -> None:
    started = datetime.now(UTC) - timedelta(seconds=2)
    await runtime.apply(make_spec(container_id, 4, LOGGER))

    async def enough() -> bool:
        lines = [ln async for ln in read_logs(runtime, container_id, follow=False, tail=None)]
        return len(lines) >= 6

    await until(enough, 15)
    lines: list[LogLine] = []
    async with aclosing(read_logs(runtime, container_id, follow=False, tail=4)) as stream:
        async for line in stream:
            lines.append(line)
    assert len(lines) == 4
    assert {ln.revision for ln in lines} == {4}
    assert {ln.stream for ln in lines} == {"stdout", "stderr"}
    for ln in lines:
        assert ln.line.startswith("line " if ln.stream == "stdout" else "err ")
        assert ln.timestamp.tzinfo is not None and ln.timestamp >= started.replace(microsecond=0)

    everything = [
        ln async for ln in read_logs(runtime, container_id, revision=4, follow=False, tail=None)
    ]
    assert [ln.line for ln in everything if ln.stream == "stdout"][:3] == [
        "line 1",
        "line 2",
        "line 3",
    ]
    assert [ln.line for ln in everything if ln.stream == "stderr"][:2] == ["err 1", "err 2"]
    assert [ln async for ln in read_logs(runtime, container_id, revision=9, follow=False)] == []

    # Podman stamps lines to the second: wait until the lines span two seconds.
    async def two_seconds() -> bool:
        nonlocal everything
        everything = [ln async for ln in read_logs(runtime, container_id, follow=False, tail=None)]
        return len({ln.timestamp for ln in everything}) >= 2

    await until(two_seconds, 10)
    cutoff = everything[-1].timestamp
    recent = [
        ln async for ln in read_logs(runtime, container_id, follow=False, tail=None, since=cutoff)
    ]
    assert recent and all(ln.timestamp >= cutoff.replace(microsecond=0) for ln in recent)
    # Read the whole log after `recent` (the logger keeps writing): the earlier second's
    # lines are in it and not in `recent`.
    whole = [ln async for ln in read_logs(runtime, container_id, follow=False, tail=None)]
    assert len(recent) < len(whole)


@pytest.mark.podman
async def test_logs_follow_streams_new_lines_and_stops_when_the_consumer_breaks(
    runtime: DockerRuntime, container_id: str
) -> None:
    await runtime.apply(make_spec(container_id, 1, LOGGER))
    numbers: list[int] = []

    async def follow() -> None:
        async with aclosing(read_logs(runtime, container_id, follow=True, tail=0)) as stream:
            async for line in stream:
                if line.stream == "stdout":
                    numbers.append(int(line.line.split()[1]))
                if len(numbers) >= 5:
                    break

    await asyncio.wait_for(follow(), 20)
    assert numbers == list(range(numbers[0], numbers[0] + 5))
    await until(lambda: runtime.open_streams == 0)


@pytest.mark.podman
async def test_logs_follow_is_released_on_cancellation(
    runtime: DockerRuntime, container_id: str
) -> None:
    await runtime.apply(make_spec(container_id, 1, LOGGER))
    received = asyncio.Event()

    async def follow() -> None:
        async for _ in read_logs(runtime, container_id, follow=True):
            received.set()

    task = asyncio.create_task(follow())
    await asyncio.wait_for(received.wait(), 15)
    await cancel_and_check_released(runtime, task)


@pytest.mark.podman
async def test_start_failure_is_reported_even_by_a_fresh_runtime(
    runtime: DockerRuntime, container_id: str, podman_url: str
) -> None:
    spec = make_spec(container_id, command=("/nonexistent",))
    await runtime.apply(spec)  # the engine refuses to start it: recorded, not raised
    [state] = await runtime.observe(container_id)
    assert state.phase == Phase.FAILED
    assert state.reason == "StartError"
    assert "/nonexistent" in state.message

    # After a restart of Dockyard the record is gone; the engine keeps no error for it.
    fresh = DockerRuntime(podman_url, readiness_timeout=1, labels=RUN_LABELS, instance=RUN_INSTANCE)
    try:
        state, _ = await wait_for_state(fresh, container_id, 1, is_phase(Phase.FAILED), 10)
        assert state.reason == "StartError"
        await fresh.apply(spec)  # retries the start, records the engine's error again
        [state] = await fresh.observe(container_id)
        # Podman 4.3 may answer "address already in use" here: the failed first start keeps
        # the host port bound. Either way it is a StartError from the engine.
        assert state.reason == "StartError" and "could not start" in state.message
    finally:
        await fresh.close()


@pytest.mark.podman
async def test_scale_runs_several_instances_and_shrinks_from_the_highest(
    runtime: DockerRuntime, container_id: str, podman_url: str
) -> None:
    spec = make_spec(container_id)
    await runtime.scale(spec, 3)
    state, _ = await wait_for_state(
        runtime, container_id, 1, lambda s: s.instances_ready == 3, within=30
    )
    assert state.phase is Phase.READY and state.instances_desired == 3
    assert len(set(state.endpoints)) == 3 and state.endpoint == state.endpoints[0]
    async with httpx.AsyncClient() as http:
        for endpoint in state.endpoints:
            assert (await http.get(f"http://{endpoint}/", timeout=5)).text == PAGE_V1
    client = engine(podman_url)
    try:
        names = {
            c.name
            for c in client.containers.list(
                all=True, filters={"label": f"{LABEL_CONTAINER_ID}={container_id}"}
            )
        }
        assert names == {f"dockyard-{container_id}-r1{s}" for s in ("", "-i1", "-i2")}
        await runtime.scale(spec, 3)  # idempotent
        await runtime.scale(spec, 1)
        [left] = client.containers.list(
            all=True, filters={"label": f"{LABEL_CONTAINER_ID}={container_id}"}
        )
        assert left.name == f"dockyard-{container_id}-r1"
        [state] = await runtime.observe(container_id)
        assert (state.instances_ready, state.endpoints) == (1, state.endpoints[:1])
        await runtime.scale(spec, 0)
        assert await runtime.observe(container_id) == []
        assert container_id not in await runtime.list_managed()
    finally:
        client.close()


@pytest.mark.podman
async def test_shrinking_keeps_an_instance_still_starting_unless_urgent(
    podman_url: str, container_id: str
) -> None:
    # an instance whose port never opens stays "starting" for the whole readiness budget
    rt = DockerRuntime(
        podman_url, readiness_timeout=60, stop_timeout=1, labels=RUN_LABELS, instance=RUN_INSTANCE
    )
    try:
        spec = make_spec(container_id, arguments=("sleep", "60"))
        await rt.scale(spec, 2)
        [state] = await rt.observe(container_id)
        assert state.phase is Phase.PENDING and state.instances_desired == 2
        await rt.scale(spec, 0)
        [state] = await rt.observe(container_id)
        assert state.instances_desired == 2  # nothing reaped while starting
        await rt.scale(spec, 1, urgent=True)
        [state] = await rt.observe(container_id)
        assert state.instances_desired == 1
    finally:
        await rt.close()


@pytest.mark.podman
async def test_a_gpu_labelled_instance_gets_the_long_start_up_budget(
    podman_url: str, container_id: str
) -> None:
    # Podman cannot run GPUs; a container carrying the GPU label stands in for one.
    rt = DockerRuntime(
        podman_url,
        readiness_timeout=1,
        gpu_readiness_timeout=600,
        stop_timeout=1,
        labels={**RUN_LABELS, LABEL_GPU: "1"},
        instance=RUN_INSTANCE,
    )
    try:
        await rt.apply(make_spec(container_id, arguments=("sleep", "60")))
        await asyncio.sleep(2.5)
        [state] = await rt.observe(container_id)
        assert state.phase is Phase.PENDING, state
        assert state.reason == "ContainerStarting"
    finally:
        await rt.close()


@pytest.mark.podman
async def test_a_new_instance_is_announced_the_moment_its_port_accepts(
    runtime: DockerRuntime, container_id: str
) -> None:
    """The runtime dials a new instance's port and tells its ready listeners (the activator)
    the endpoint that accepts, which is the one observe reports afterwards."""
    said: list[tuple[str, int, tuple[str, ...]]] = []
    announced = asyncio.Event()

    def listener(cid: str, revision: int, endpoints: tuple[str, ...]) -> None:
        said.append((cid, revision, endpoints))
        announced.set()

    assert isinstance(runtime, SignalsReady)
    runtime.ready_listeners.append(listener)
    await runtime.scale(make_spec(container_id), 1)
    await asyncio.wait_for(announced.wait(), 15)
    [(cid, revision, endpoints)] = said
    assert (cid, revision) == (container_id, 1) and len(endpoints) == 1
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://{endpoints[0]}/index.html", timeout=5)
    assert response.text == PAGE_V1
    state = await wait_ready(runtime, container_id, 1)
    assert state.endpoints == endpoints


@pytest.mark.podman
async def test_scale_after_an_observe_that_saw_nothing_meets_an_instance_made_meanwhile(
    runtime: DockerRuntime, container_id: str, podman_url: str
) -> None:
    """The scale after an observe creates without listing first; an instance made in between
    (here by another adapter on the same engine) answers 409, and the scale then adopts it
    rather than making a second one."""
    assert await runtime.observe(container_id) == []
    other = DockerRuntime(
        podman_url, readiness_timeout=20, labels=RUN_LABELS, instance=RUN_INSTANCE
    )
    try:
        await other.apply(make_spec(container_id))
    finally:
        await other.close()
    await runtime.scale(make_spec(container_id), 1)
    client = engine(podman_url)
    try:
        found = client.containers.list(
            all=True, filters={"label": f"{LABEL_CONTAINER_ID}={container_id}"}
        )
        assert [c.name for c in found] == [f"dockyard-{container_id}-r1"]
    finally:
        client.close()
    state = await wait_ready(runtime, container_id, 1)
    assert state.instances_desired == 1


@pytest.mark.podman
async def test_the_suites_runtime_does_not_see_another_installations_containers(
    podman_url: str, runtime: DockerRuntime
) -> None:
    """What a reconciler's resync collects as orphans is what ``list_managed`` lists: the suite's
    runtimes must not list a real Dockyard's containers on the same engine (a runtime without an
    installation id lists them all, and a resync would remove them)."""
    client = docker.DockerClient(base_url=podman_url, version="1.41")
    suffix = uuid.uuid4().hex[:8]
    foreign = client.containers.create(
        HTTPD_V1,
        name=f"dockyard-user-{suffix}",
        labels={
            "dockyard.dev/managed-by": "dockyard",
            "dockyard.dev/revision": "1",
            "dockyard.dev/container-id": f"user-{suffix}",
        },
    )
    try:
        assert runtime.instance == RUN_INSTANCE
        assert f"user-{suffix}" not in await runtime.list_managed()
        unscoped = DockerRuntime(podman_url, labels=RUN_LABELS)
        try:  # the hazard this guards against
            assert f"user-{suffix}" in await unscoped.list_managed()
        finally:
            await unscoped.close()
    finally:
        foreign.remove(force=True)
        client.close()
