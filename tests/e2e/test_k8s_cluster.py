"""The driver against a real cluster (``KUBECONFIG``): apply, observe, update, remove."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid

import pytest

from app.runtime.base import Phase, WorkloadSpec
from app.runtime.k8s import KubernetesRuntime
from app.runtime.k8s_manifests import KubernetesConfig

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="no KUBECONFIG: no cluster"),
]


async def wait_for(runtime: KubernetesRuntime, container_id: str, revision: int) -> Phase:
    for _ in range(120):
        states = {state.revision: state for state in await runtime.observe(container_id)}
        state = states.get(revision)
        if state is not None and state.phase is not Phase.PENDING:
            return state.phase
        await asyncio.sleep(1)
    return Phase.PENDING


async def test_rollout_on_a_real_cluster() -> None:
    config = KubernetesConfig(namespace=os.environ.get("DOCKYARD_E2E_NAMESPACE", "default"))
    runtime = KubernetesRuntime.from_kubeconfig(config)
    container_id = f"e2e-{uuid.uuid4().hex[:8]}"
    spec = WorkloadSpec(
        container_id=container_id,
        revision=1,
        name="e2e",
        owner="e2e",
        slug=container_id,
        image="nginx:1.27",
        cpu=0.1,
        ram="64Mi",
        ram_bytes=64 * 2**20,
        gpu=0,
        ephemeral_storage="100Mi",
        ephemeral_storage_bytes=100 * 2**20,
        port=80,
    )
    try:
        await runtime.apply(spec)
        assert await wait_for(runtime, container_id, 1) is Phase.READY
        await runtime.apply(dataclasses.replace(spec, revision=2, image="nginx:does-not-exist"))
        assert await wait_for(runtime, container_id, 2) is Phase.FAILED
        assert container_id in await runtime.list_managed()
    finally:
        await runtime.remove(container_id)
        await runtime.close()
