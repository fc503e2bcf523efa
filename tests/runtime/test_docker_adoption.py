"""Adopting what a dead Dockyard left half done, against a real Podman engine (issue 16).

A leader ``dockyard serve`` SIGKILLed between creating a revision's engine container and starting
it leaves the container ``created``. The replica that takes over adopts it: its reconciler must
start it (not wait for the start-up budget to fail it), and a never-started instance that is
surplus, or of a revision out of the traffic, must be removed rather than started. The
half-done containers are made here exactly the way the runtime makes its own
(``container_create_kwargs``: name, labels) and carry this run's label; the tests remove only
the engine containers of the Dockyard containers they created.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import docker
import httpx
import pytest
from sqlmodel import Session

from app.domain.models import Container
from app.domain.principal import Principal
from app.reconcile import Reconciler, ReconcilerOptions, workload_spec
from app.runtime.base import LABEL_CONTAINER_ID, Phase, WorkloadSpec
from app.runtime.docker import DockerRuntime, container_create_kwargs
from app.server import build_state
from app.services import containers as svc
from app.services.context import ServiceContext
from app.settings import Settings
from tests.runtime.test_docker_runtime import make_spec
from tests.support.podman import HTTPD_V1, PAGE_V1, RUN_INSTANCE, RUN_LABELS

pytestmark = pytest.mark.podman
ALICE = Principal("alice")


@pytest.fixture
def client(podman_url: str) -> Iterator[docker.DockerClient]:
    engine = docker.DockerClient(base_url=podman_url)
    try:
        yield engine
    finally:
        engine.close()


def half_created(
    client: docker.DockerClient, spec: WorkloadSpec, replica: int = 0
) -> docker.models.containers.Container:
    """What a replica killed between ``create`` and ``start`` leaves behind."""
    kwargs = container_create_kwargs(
        spec, instance=RUN_INSTANCE, extra_labels=RUN_LABELS, replica=replica
    )
    kwargs.pop("detach")
    made = client.containers.create(**kwargs)
    assert made.status == "created"
    return made


def engine_containers(client: docker.DockerClient, container_id: str) -> list[str]:
    found = client.containers.list(
        all=True, filters={"label": f"{LABEL_CONTAINER_ID}={container_id}"}
    )
    return sorted(f"{c.name}:{c.status}" for c in found)


def remove_engine_containers(client: docker.DockerClient, container_id: str) -> None:
    for c in client.containers.list(
        all=True, filters={"label": f"{LABEL_CONTAINER_ID}={container_id}"}
    ):
        c.remove(force=True)


@pytest.fixture
def ctx(settings: Settings) -> Iterator[ServiceContext]:
    context = build_state(settings).ctx
    yield context
    context.engine.dispose()


async def test_a_fresh_reconciler_starts_the_instance_a_killed_leader_never_started(
    ctx: ServiceContext, podman_url: str, client: docker.DockerClient
) -> None:
    body = {"name": "web", "image": HTTPD_V1, "port": 8080, "ram": "64Mi"}
    container_id = svc.create_container(ctx=ctx, principal=ALICE, data=body).id
    runtime = DockerRuntime(
        podman_url, readiness_timeout=60, stop_timeout=1, labels=RUN_LABELS, instance=RUN_INSTANCE
    )
    try:
        with Session(ctx.engine) as session:
            container = session.get(Container, container_id)
            assert container is not None
            half = half_created(client, workload_spec(container, ctx.catalog))

        # The standby that takes over: a fresh runtime and reconciler, nothing in memory.
        reconciler = Reconciler(
            engine=ctx.engine,
            runtime=runtime,
            catalog=ctx.catalog,
            options=ReconcilerOptions(drain_seconds=0.0),
        )
        deadline = time.monotonic() + 30  # well inside the 60 s start-up budget
        while True:
            await reconciler.reconcile(container_id)
            view = svc.get_container(ctx=ctx, principal=ALICE, container_id=container_id)
            if view.status != "deploying" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert (view.status, view.readyRevision) == ("deployed", 1), (
            view.status,
            view.statusReason,
            engine_containers(client, container_id),
        )
        half.reload()
        assert half.status == "running"  # adopted and started, not replaced by a new one
        assert engine_containers(client, container_id) == [f"{half.name}:running"]
        [state] = await runtime.observe(container_id)
        assert state.phase is Phase.READY and state.instances_unstarted == 0
        assert state.endpoint is not None
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://{state.endpoint}/", timeout=5)
        assert response.text == PAGE_V1
    finally:
        await runtime.close()
        remove_engine_containers(client, container_id)


async def deployed(
    reconciler: Reconciler, ctx: ServiceContext, container_id: str, revision: int
) -> None:
    """Reconcile (as the leader's loop would) until ``revision`` is deployed, or fail after 30 s
    (well inside the runtimes' 60 s start-up budget)."""
    deadline = time.monotonic() + 30
    while True:
        await reconciler.reconcile(container_id)
        view = svc.get_container(ctx=ctx, principal=ALICE, container_id=container_id)
        if (view.status, view.readyRevision) == ("deployed", revision):
            return
        assert time.monotonic() < deadline, (view.status, view.statusReason)
        await asyncio.sleep(0.2)


async def test_a_never_started_instance_of_a_revision_out_of_traffic_is_retired_not_started(
    ctx: ServiceContext, podman_url: str, client: docker.DockerClient
) -> None:
    body = {"name": "web", "image": HTTPD_V1, "port": 8080, "ram": "64Mi"}
    container_id = svc.create_container(ctx=ctx, principal=ALICE, data=body).id
    runtime = DockerRuntime(
        podman_url, readiness_timeout=60, stop_timeout=1, labels=RUN_LABELS, instance=RUN_INSTANCE
    )
    try:
        with Session(ctx.engine) as session:
            first = session.get(Container, container_id)
            assert first is not None
            since = int(time.time()) - 1
            stale = half_created(client, workload_spec(first, ctx.catalog))
        # Revision 2 supersedes it before anything ran: revision 1 gets no traffic.
        svc.update_container(
            ctx=ctx, principal=ALICE, container_id=container_id, data={"env": {"V": "2"}}
        )
        reconciler = Reconciler(
            engine=ctx.engine,
            runtime=runtime,
            catalog=ctx.catalog,
            options=ReconcilerOptions(drain_seconds=0.0),
        )
        await deployed(reconciler, ctx, container_id, 2)
        await reconciler.reconcile(container_id)  # retires what is out of the traffic
        assert engine_containers(client, container_id) == [f"dockyard-{container_id}-r2:running"]
        with pytest.raises(docker.errors.NotFound):
            stale.reload()
        # …and it was never started on its way out (the engine's event log says so).
        events = client.events(
            since=since, until=int(time.time()) + 1, decode=True, filters={"container": stale.id}
        )
        actions = {e.get("status") or e.get("Action") for e in events}
        assert "create" in actions and "start" not in actions, actions
    finally:
        await runtime.close()
        remove_engine_containers(client, container_id)


async def test_never_started_instances_are_reported_and_started_or_removed_by_scale(
    podman_url: str, container_id: str, client: docker.DockerClient
) -> None:
    spec = make_spec(container_id)
    for replica in (0, 1):
        half_created(client, spec, replica)
    runtime = DockerRuntime(
        podman_url, readiness_timeout=60, stop_timeout=1, labels=RUN_LABELS, instance=RUN_INSTANCE
    )
    try:
        [state] = await runtime.observe(container_id)
        assert (state.phase, state.instances_desired, state.instances_unstarted) == (
            Phase.PENDING,
            2,
            2,
        )
        await runtime.scale(spec, 1)  # the lowest is started, the surplus one is not
        name = f"dockyard-{container_id}-r1"
        assert engine_containers(client, container_id) == [f"{name}:running"]
        [state] = await runtime.observe(container_id)
        assert (state.instances_desired, state.instances_unstarted) == (1, 0)

        half_created(client, spec, 1)
        await runtime.scale(spec, 1)  # a surplus never-started instance goes first
        assert engine_containers(client, container_id) == [f"{name}:running"]
    finally:
        await runtime.close()


async def test_a_never_started_instance_of_a_revision_scaled_to_zero_is_removed_not_started(
    podman_url: str, container_id: str, client: docker.DockerClient
) -> None:
    spec = make_spec(container_id)
    half_created(client, spec)
    runtime = DockerRuntime(
        podman_url, readiness_timeout=60, stop_timeout=1, labels=RUN_LABELS, instance=RUN_INSTANCE
    )
    try:
        await runtime.scale(spec, 0)  # not urgent: a starting instance would stay, this one not
        assert engine_containers(client, container_id) == []
        assert await runtime.observe(container_id) == []
    finally:
        await runtime.close()
