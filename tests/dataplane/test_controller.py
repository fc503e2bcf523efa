"""Routes from the database: containers, their traffic (the traffic API) and the endpoints the
reconciler wrote, served to a real Caddy by ``DataPlane`` and the route resolver (upstreams on
127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.dataplane.caddy import ProxyOptions
from app.dataplane.controller import DataPlane
from app.dataplane.supervisor import CaddySupervisor, run_dir
from app.domain.principal import Principal
from app.reconcile import write_endpoints
from app.runtime.base import Phase, RevisionState
from app.server import build_state
from app.services import containers as svc
from app.services.context import ServiceContext
from app.settings import Settings
from tests.dataplane.test_caddy_real import upstream
from tests.support.server import free_port

ALICE = Principal("alice")


@pytest.fixture
def ctx(settings: Settings) -> Iterator[ServiceContext]:
    context = build_state(settings, port=8000).ctx
    yield context
    context.engine.dispose()


@pytest.fixture
async def dataplane(tmp_path: Path, ctx: ServiceContext) -> AsyncIterator[DataPlane]:
    directory = run_dir(tmp_path, "dp")
    options = ProxyOptions(
        listen=f"127.0.0.1:{free_port()}",
        admin=f"unix/{directory}/caddy-admin.sock",
        domain="localhost",
    )
    plane = DataPlane(
        engine=ctx.engine,
        supervisor=CaddySupervisor(options=options, directory=directory),
        domain="localhost",
        resync_interval=0.2,
    )
    await plane.start()
    yield plane
    await plane.stop()


def ready(container_id: str, revision: int, *endpoints: str) -> RevisionState:
    return RevisionState(
        container_id, revision, Phase.READY, endpoints=endpoints, instances_ready=len(endpoints)
    )


async def test_split_and_tag_host_come_from_the_database(
    ctx: ServiceContext, dataplane: DataPlane
) -> None:
    view = svc.create_container(
        ctx=ctx,
        principal=ALICE,
        data={"name": "web", "image": "localhost/web:v1", "port": 8080},
    )
    svc.update_container(
        ctx=ctx, principal=ALICE, container_id=view.id, data={"image": "localhost/web:v2"}
    )
    host = view.urls[0].split(":")[0]
    base = f"http://{dataplane.supervisor.options.listen}"
    async with httpx.AsyncClient(base_url=base) as client:
        await dataplane.sync()
        assert await dataplane.supervisor.converged()
        cold = await client.get("/", headers={"Host": host})
        assert cold.status_code == 503  # known container, nothing ready yet

        with upstream("v1-a") as a, upstream("v1-b") as b, upstream("v2") as c:
            # What the leader's reconciler writes once both revisions run.
            assert write_endpoints(
                ctx.engine, view.id, [ready(view.id, 1, a, b), ready(view.id, 2, c)]
            )
            svc.set_traffic(
                ctx=ctx,
                principal=ALICE,
                container_id=view.id,
                data=[
                    {"revision": 1, "percent": 90},
                    {"revision": 2, "percent": 10, "tag": "next"},
                ],
            )
            await asyncio.sleep(0.5)  # the periodic resync picks the rows up
            assert await dataplane.supervisor.converged()
            # Caddy picks each request's upstream at random among the weight units: 4000
            # requests put 2 % at more than four standard deviations of the 10 % share.
            counts: Counter[str] = Counter()
            total = 4000

            async def worker(n: int) -> None:
                for _ in range(n):
                    response = await client.get("/", headers={"Host": host})
                    counts[response.json()["name"]] += 1

            await asyncio.gather(*(worker(total // 8) for _ in range(8)))
            assert abs((counts["v1-a"] + counts["v1-b"]) / total - 0.9) <= 0.02, counts
            assert abs(counts["v2"] / total - 0.1) <= 0.02, counts
            tagged = await client.get("/", headers={"Host": f"next---{host}"})
            assert tagged.json()["name"] == "v2"

            # Revision 1 gone from the runtime: its endpoints leave the table, its share with them.
            assert write_endpoints(ctx.engine, view.id, [ready(view.id, 2, c)])
            await dataplane.sync()
            assert await dataplane.supervisor.converged()
            names = {
                (await client.get("/", headers={"Host": host})).json()["name"] for _ in range(20)
            }
            assert names == {"v2"}

        svc.delete_container(ctx=ctx, principal=ALICE, container_id=view.id)
        await dataplane.sync()
        assert await dataplane.supervisor.converged()
        gone = await client.get("/", headers={"Host": host})
        assert gone.status_code == 404


def served_hosts(dataplane: DataPlane) -> dict[str, list[list[object]]]:
    """The hosts of the table file the resolver reads."""
    document = json.loads(dataplane.supervisor.table_file.read_text())
    assert document["version"] == dataplane.supervisor.version
    hosts: dict[str, list[list[object]]] = document["hosts"]
    return hosts


async def test_an_announced_change_rereads_that_container_only(
    ctx: ServiceContext, dataplane: DataPlane
) -> None:
    """What makes 100k containers affordable: a change for one container re-reads its rows and
    nothing else; a change naming no container (and the periodic safety net) reads them all."""
    a = svc.create_container(
        ctx=ctx, principal=ALICE, data={"name": "a", "image": "localhost/web:v1", "port": 8080}
    )
    b = svc.create_container(
        ctx=ctx, principal=ALICE, data={"name": "b", "image": "localhost/web:v1", "port": 8080}
    )
    for view in (a, b):  # revision 1 is what their hosts route to once it has endpoints
        svc.set_traffic(
            ctx=ctx, principal=ALICE, container_id=view.id, data=[{"revision": 1, "percent": 100}]
        )
    host_a, host_b = (view.urls[0].split(":")[0] for view in (a, b))
    await dataplane.sync()
    before = served_hosts(dataplane)
    assert host_a in before and host_b in before

    # Rows written without telling anyone (as a lost announcement would leave them).
    assert write_endpoints(ctx.engine, a.id, [ready(a.id, 1, "127.0.0.1:1001")])
    assert write_endpoints(ctx.engine, b.id, [ready(b.id, 1, "127.0.0.1:1002")])
    await dataplane.sync([b.id])
    hosts = served_hosts(dataplane)
    assert hosts[host_b] == [["127.0.0.1:1002", 1]]
    assert hosts[host_a] == before[host_a]  # not re-read

    svc.delete_container(ctx=ctx, principal=ALICE, container_id=b.id)
    await dataplane.sync([b.id])
    assert host_b not in served_hosts(dataplane)

    dataplane.changed()  # no container named: everything is read again
    for _ in range(100):
        if served_hosts(dataplane)[host_a] == [["127.0.0.1:1001", 1]]:
            break
        await asyncio.sleep(0.05)
    assert served_hosts(dataplane)[host_a] == [["127.0.0.1:1001", 1]]
