"""Leader election between two electors over the emulator's Lease API."""

from __future__ import annotations

import asyncio
import datetime
import os

import kubernetes.client

from app.runtime.k8s_lease import LeaseElector, default_identity
from tests.support.kmock_k8s import EmulatorThread
from tests.support.kube import NS


def elector(k8s: EmulatorThread, identity: str, lease_seconds: int = 15) -> LeaseElector:
    return LeaseElector(
        k8s.api_client(),
        namespace=NS,
        identity=identity,
        lease_seconds=lease_seconds,
        renew_every=0.05,
    )


async def test_one_leader_then_takeover_after_expiry(k8s: EmulatorThread) -> None:
    first, second = elector(k8s, "a", lease_seconds=1), elector(k8s, "b", lease_seconds=1)
    assert await first.try_acquire() is True
    assert await second.try_acquire() is False
    assert await first.is_leader() and not await second.is_leader()
    assert await first.try_acquire() is True  # renewal keeps the lease
    lease = k8s.get("leases", NS, "dockyard-reconciler")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "a"
    assert lease["spec"]["leaseTransitions"] == 0
    await asyncio.sleep(1.2)  # "a" stopped renewing: the lease expires
    assert await second.try_acquire() is True
    assert await first.try_acquire() is False
    assert not await first.is_leader()
    lease = k8s.get("leases", NS, "dockyard-reconciler")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1


async def test_racing_electors_elect_exactly_one(k8s: EmulatorThread) -> None:
    electors = [elector(k8s, f"e{index}") for index in range(4)]
    results = await asyncio.gather(*(e.try_acquire() for e in electors))
    assert sum(results) == 1


async def test_run_loop_and_release(k8s: EmulatorThread) -> None:
    first, second = elector(k8s, "a"), elector(k8s, "b")
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    for _ in range(100):
        if await first.is_leader():
            break
        await asyncio.sleep(0.02)
    assert await first.is_leader()
    stop.set()
    await task
    await first.release()
    assert await second.try_acquire() is True  # no need to wait for expiry


def test_default_identity_is_host_and_pid() -> None:
    assert default_identity().endswith(f"-{os.getpid()}")


def test_lease_times_are_microtime(k8s: EmulatorThread) -> None:
    asyncio.run(elector(k8s, "a").try_acquire())
    api = kubernetes.client.CoordinationV1Api(k8s.api_client())
    lease = api.read_namespaced_lease("dockyard-reconciler", NS)
    assert isinstance(lease.spec.renew_time, datetime.datetime)
