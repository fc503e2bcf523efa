"""The driver against a real cluster (``KUBECONFIG``): apply, observe, update, remove."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from typing import Any

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


def small_spec(container_id: str, image: str, port: int, **more: Any) -> WorkloadSpec:
    """Revision 1 of ``image`` with a tenth of a CPU, 64 MiB and 100 MiB of scratch space."""
    return WorkloadSpec(
        container_id=container_id,
        revision=1,
        name="e2e",
        owner="e2e",
        slug=container_id,
        image=image,
        cpu=0.1,
        ram="64Mi",
        ram_bytes=64 * 2**20,
        gpu=0,
        ephemeral_storage="100Mi",
        ephemeral_storage_bytes=100 * 2**20,
        port=port,
        **more,
    )


async def test_rollout_on_a_real_cluster() -> None:
    config = KubernetesConfig(namespace=os.environ.get("DOCKYARD_E2E_NAMESPACE", "default"))
    runtime = KubernetesRuntime.from_kubeconfig(config)
    container_id = f"e2e-{uuid.uuid4().hex[:8]}"
    spec = small_spec(container_id, "nginx:1.27", 80)
    try:
        await runtime.apply(spec)
        assert await wait_for(runtime, container_id, 1) is Phase.READY
        await runtime.apply(dataclasses.replace(spec, revision=2, image="nginx:does-not-exist"))
        assert await wait_for(runtime, container_id, 2) is Phase.FAILED
        assert container_id in await runtime.list_managed()
    finally:
        await runtime.remove(container_id)
        await runtime.close()


def _get(url: str) -> str:
    """GET a Knative URL: straight, or through ``DOCKYARD_E2E_KNATIVE_GATEWAY`` (e.g. a
    ``kubectl port-forward`` of Kourier) with the URL's host as ``Host``."""
    import urllib.parse
    import urllib.request

    gateway = os.environ.get("DOCKYARD_E2E_KNATIVE_GATEWAY")
    parsed = urllib.parse.urlsplit(url)
    target = f"{gateway.rstrip('/')}{parsed.path or '/'}" if gateway else url
    request = urllib.request.Request(target, headers={"Host": parsed.netloc})
    with urllib.request.urlopen(request, timeout=120) as response:
        return str(response.read().decode())


async def test_knative_scale_to_zero_wake_split_and_tag_on_a_real_cluster() -> None:
    """Needs Knative Serving with a reachable ingress (DNS for its domain, or
    ``DOCKYARD_E2E_KNATIVE_GATEWAY``); skipped where the cluster does not serve Knative."""
    from app.runtime.base import Scaling, TrafficTarget
    from app.runtime.knative import KnativeRuntime, serves_knative

    config = KubernetesConfig(namespace=os.environ.get("DOCKYARD_E2E_NAMESPACE", "default"))
    runtime = KnativeRuntime.from_kubeconfig(config)
    assert isinstance(runtime, KnativeRuntime)
    if not await asyncio.to_thread(serves_knative, runtime.api_client):
        await runtime.close()
        pytest.skip("the cluster does not serve serving.knative.dev/v1")
    container_id = f"e2e-kn-{uuid.uuid4().hex[:8]}"
    spec = small_spec(
        container_id,
        "ghcr.io/knative/helloworld-go:latest",
        8080,
        env={"TARGET": "r1"},
        scaling=Scaling(min_instances=0, max_instances=3, scale_to_zero_after_seconds=6),
    )
    try:
        await runtime.apply(spec)
        assert await wait_for(runtime, container_id, 1) is Phase.READY
        serving = await runtime.serving(container_id)
        assert serving is not None and serving.url
        assert "r1" in await asyncio.to_thread(_get, serving.url)
        # Idle: Knative scales to zero, and that is a healthy READY state.
        for _ in range(180):
            states = {s.revision: s for s in await runtime.observe(container_id)}
            if states[1].instances_ready == 0:
                break
            await asyncio.sleep(1)
        assert (states[1].phase, states[1].instances_ready) == (Phase.READY, 0)
        assert "r1" in await asyncio.to_thread(_get, serving.url)  # wakes on a request
        split = (
            TrafficTarget(percent=90, revision=1),
            TrafficTarget(percent=10, latest=True, tag="canary"),
        )
        await runtime.apply(
            dataclasses.replace(spec, revision=2, env={"TARGET": "r2"}, traffic=split)
        )
        assert await wait_for(runtime, container_id, 2) is Phase.READY
        for _ in range(60):
            serving = await runtime.serving(container_id)
            assert serving is not None
            if any(t.tag == "canary" and t.url for t in serving.traffic):
                break
            await asyncio.sleep(1)
        canary = next(t.url for t in serving.traffic if t.tag == "canary" and t.url)
        from_tag = [await asyncio.to_thread(_get, canary) for _ in range(10)]
        assert all("r2" in answer for answer in from_tag)
        assert serving.url
        answers = [await asyncio.to_thread(_get, serving.url) for _ in range(300)]
        share = sum("r2" in answer for answer in answers) / len(answers)
        assert 0.03 <= share <= 0.2, share  # 10 % of 300 requests, with room for chance
    finally:
        await runtime.remove(container_id)
        await runtime.close()
